"""Small tensor ops shared by models and the decode loop."""
from kerasllm._tf import tf


def dynamic_update_slice(tensor, update, indices):
    """``tensor`` with ``update`` written at ``indices`` (one start per axis). Under XLA this is an
    in-place dynamic-update-slice (no copy of ``tensor``); TFLite converts it to DYNAMIC_UPDATE_SLICE."""
    from tensorflow.compiler.tf2xla.python import xla  # the public API has no dynamic_update_slice

    return xla.dynamic_update_slice(tensor, update, tf.stack([tf.cast(i, tf.int32) for i in indices]))
