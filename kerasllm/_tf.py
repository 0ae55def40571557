"""The one place TensorFlow and tf_keras are imported.

tensorflow-model-optimization only supports Keras 2, so ``TF_USE_LEGACY_KERAS`` must be
set before TensorFlow is imported anywhere. Every module that needs TensorFlow does
``from kerasllm._tf import tf, keras`` inside the function that needs it, so commands that
do not touch a model never pay TensorFlow's start-up time.
"""
import os

# Name kept here so code that starts a Keras 3 process (a benchmark peer) can drop it from the child's env.
LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"
os.environ[LEGACY_KERAS_VARIABLE] = "1"

from kerasllm import logs  # noqa: E402

logs.before_tensorflow()  # quiet by default (kerasllm --verbose shows the libraries' messages)
with logs.quiet_native_stderr():
    import tensorflow as tf  # noqa: E402
    import tf_keras as keras  # noqa: E402

    tf.config.list_physical_devices()  # CUDA probing happens here: inside the filter

logs.after_tensorflow(tf)

__all__ = ["tf", "keras", "no_autotune"]


def no_autotune(dataset):
    """Turn off tf.data autotuning: in TF 2.21 tearing down an autotuned iterator waits for
    the autotune thread's next wake-up (1.3 s, 2.6 s, ...), once per epoch and per predict."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
