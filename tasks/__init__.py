"""The task functions users call from Python; the ``kerasllm`` command line runs the same tasks."""
from tasks.classify import train_classifier
from tasks.export import export

__all__ = ["train_classifier", "export"]
