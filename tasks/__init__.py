"""The task functions users call from Python; the ``kerasllm`` command line runs the same tasks.

Each task module imports TensorFlow only inside its functions, so ``import tasks`` is cheap.
"""
from tasks.classify import train_classifier
from tasks.compress import compress
from tasks.export import export
from tasks.language_model import train_draft_model, train_language_model
from tasks.quickstart import quickstart
from tasks.serve import serve
from tasks.similarity import build_similarity_index

__all__ = ["train_classifier", "train_language_model", "train_draft_model", "build_similarity_index", "compress",
           "export", "serve", "quickstart"]
