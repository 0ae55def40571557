"""Export task: write a model to ``saved_models/<name>/<version>/``."""
from pathlib import Path

from kerasllm.export import FORMATS


def export(model, target, formats=FORMATS, version=None, serving=False, **options):
    """Export ``model`` (classifier, language model, similarity index, compressed variant) as a new
    version under ``target`` (e.g. ``saved_models/sms``).

    serving=True also writes what ``tensorflow_model_server`` needs for every model under the root
    (``models.config``, batching and monitoring configs, warm-up records, the launch command).
    Returns ``{"version_dir": ..., "saved_model": ..., "tflite": ..., ["serving": {...}]}``.
    """
    from kerasllm.export import export as _export

    paths = _export(model, target, formats=formats, version=version, **options)
    if serving:
        if "saved_model" not in paths:
            raise ValueError("serving=True needs the 'saved_model' format: TF Serving loads SavedModels")
        from kerasllm.export.tf_serving import write_serving_bundle

        paths["serving"] = write_serving_bundle(Path(target).parent)
    return paths
