"""The task functions users call from Python; the ``kerasllm`` command line runs the same tasks.

Each task module imports TensorFlow only inside its functions, so ``import tasks`` is cheap.
"""
from tasks.export import export
from tasks.language_model import train_language_model

__all__ = ["export", "train_language_model"]
