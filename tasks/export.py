"""Export task: write a model to ``saved_models/<name>/<version>/``."""
from kerasllm.export import FORMATS


def export(model, target, formats=FORMATS, version=None, **options):
    """Export ``model`` (classifier, language model, similarity index, compressed variant) as a new
    version under ``target``; returns ``{"version_dir": ..., "saved_model": ..., "tflite": ...}``."""
    from kerasllm.export import export as _export

    return _export(model, target, formats=formats, version=version, **options)
