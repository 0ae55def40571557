"""The task functions users call from Python; the ``kerasllm`` command line runs the same tasks.

Each task module imports TensorFlow only inside its functions, so ``import tasks`` is cheap.
"""
from tasks.export import export
from tasks.serve import serve

__all__ = ["export", "serve"]
