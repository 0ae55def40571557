"""The task functions users call from Python; the ``kerasllm`` command line runs the same tasks.

Each task module imports TensorFlow only inside its functions, so ``import tasks`` is cheap.
"""
from tasks.export import export
from tasks.similarity import build_similarity_index

__all__ = ["export", "build_similarity_index"]
