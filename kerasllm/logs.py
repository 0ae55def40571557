"""Quiet by default: the one place that decides what TensorFlow, absl, LiteRT and tf_keras may print.

A clean run of any ``kerasllm`` command shows only kerasllm's own output; ``kerasllm --verbose``
(or ``KERASLLM_VERBOSE=1``) shows the libraries' messages again. ``kerasllm._tf`` calls
:func:`before_tensorflow` and :func:`after_tensorflow` around its import; C++ logging is read from
the environment once, when TensorFlow loads, so the choice must be made before that.
"""
from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import warnings

VERBOSE_VARIABLE = "KERASLLM_VERBOSE"

# Lines native code writes to stderr that say nothing is wrong: absl's pre-init notice, its INFO/WARNING
# lines (oneDNN, "Could not find cuda drivers"), CUDA probing errors on a CPU machine, LiteRT's delegate INFO.
_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} \S+ +\d+ \S+\] "
                    r"|E\d{4} .*(cuda|cuInit|CUDA)|INFO: Created TensorFlow Lite)")
_lock = threading.RLock()  # re-entrant: the import hook runs inside _tf.py's filter
_litert_quieted = False


def set_verbose(flag):
    """Called by the command line before any TensorFlow import."""
    if flag:
        os.environ[VERBOSE_VARIABLE] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


def verbose():
    return os.environ.get(VERBOSE_VARIABLE, "") not in ("", "0")


def before_tensorflow():
    if verbose():
        return
    # 3 = C++ FATAL only: hides the cuInit/"Could not find cuda drivers" lines a CPU machine prints.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")


@contextlib.contextmanager
def quiet_native_stderr():
    """Hold what native code writes to file descriptor 2 and pass on all but the known noise lines.

    TensorFlow's C++ start-up lines ignore ``TF_CPP_MIN_LOG_LEVEL`` (they come before absl's log
    initialisation), so they can only be filtered at the descriptor. Process-wide: other threads'
    stderr is held too while this runs, then replayed; used only around imports and the first LiteRT
    interpreter, under a lock.
    """
    if verbose():
        yield
        return
    with _lock, tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode("utf-8", "replace").splitlines(keepends=True)
                    if not _NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def litert_interpreter(**kwargs):
    """An ``ai_edge_litert`` Interpreter with tensors allocated. The first one in a process is made
    under :func:`quiet_native_stderr`, as LiteRT prints its XNNPACK INFO line once, at allocation."""
    global _litert_quieted
    from ai_edge_litert.interpreter import Interpreter

    if _litert_quieted:
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
        return interpreter
    with quiet_native_stderr():
        interpreter = Interpreter(**kwargs)
        interpreter.allocate_tensors()
    _litert_quieted = True
    return interpreter


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` -- wherever it happens, e.g. ``from tensorflow.core.protobuf
    import ...`` for a protocol buffer -- under :func:`before_tensorflow` and :func:`quiet_native_stderr`,
    so the start-up lines are filtered even when ``kerasllm._tf`` is not the first to import it."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow":
            return None
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(self)  # once: the module is in sys.modules from now on
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec_module(module):
            before_tensorflow()
            with quiet_native_stderr():
                exec_module(module)

        spec.loader.exec_module = quiet_exec_module
        return spec


def install_import_hook():
    """Called when ``kerasllm`` is imported; does nothing once TensorFlow is loaded."""
    if "tensorflow" in sys.modules or any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def after_tensorflow(tf):
    if verbose():
        return
    tf.get_logger().setLevel(logging.ERROR)
    tf.autograph.set_verbosity(0)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:  # absl comes with TensorFlow; guard anyway
        pass
    warnings.filterwarnings("ignore", module=r"(tf_keras|tensorflow|tensorflow_model_optimization|ai_edge_litert)")
