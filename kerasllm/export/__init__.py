"""Export any kerasllm model to ``<root>/<name>/<version>/`` (TF Serving's layout).

A model object is exportable when it has:

- ``kind``: a short string ("classifier", "language_model", "similarity_index") that
  ``kerasllm.load`` uses to pick the runtime (see ``kerasllm.runtime.LOADERS``);
- ``export_artifacts(directory, formats, **options) -> dict``: writes the SavedModel at the
  top of ``directory`` and/or ``model.tflite`` beside it, and returns what the manifest should
  record beyond the kind (file names, labels, ...).
"""
from __future__ import annotations

import time
from pathlib import Path

from kerasllm.export.layout import MANIFEST, publish, write_json_atomic

FORMATS = ("saved_model", "tflite")
TFLITE_FILE = "model.tflite"


def export(model, target, formats=FORMATS, version=None, **options):
    """Write ``model`` as a new version under ``target`` (e.g. ``saved_models/sms``).

    Returns a dict: ``version_dir`` and one path per written format.
    """
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ValueError(f"unknown export formats {unknown or formats!r}; expected some of {FORMATS}")
    if not hasattr(model, "export_artifacts"):
        raise TypeError(f"{type(model).__name__} cannot be exported: expected a kerasllm model (classifier, "
                        "language model, similarity index or compressed variant)")
    recorded = {}

    def write(tmp: Path):
        extra = model.export_artifacts(tmp, formats, **options) or {}
        recorded.update(extra)
        write_json_atomic(tmp / MANIFEST, {"kind": model.kind, "formats": list(formats),
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra})

    version_dir = publish(target, write, version=version)
    paths = {"version_dir": version_dir}
    if "saved_model" in formats:
        paths["saved_model"] = version_dir
    if "tflite" in formats:
        paths["tflite"] = version_dir / TFLITE_FILE
    return paths
