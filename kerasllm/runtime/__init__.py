"""Fast predictors over exported models: ``load(path)`` reads the manifest and picks the runtime."""
from __future__ import annotations

import importlib

from kerasllm.export.layout import read_manifest, resolve_version

# kind -> "module:function(version_dir, manifest, prefer)"; imported only when that kind is loaded.
LOADERS = {
    "classifier": "kerasllm.runtime.classifier:load",
    "similarity_index": "kerasllm.runtime.similarity:load",
    "language_model": "kerasllm.runtime.language_model:load",
}


def load(path, version=None, prefer="tflite"):
    """Load an export for inference: the newest version under ``path`` unless ``version``.

    ``prefer="tflite"`` uses the TFLite file when the export has one, else the SavedModel;
    ``prefer="saved_model"`` the other way round.
    """
    if prefer not in ("tflite", "saved_model"):
        raise ValueError(f"prefer must be 'tflite' or 'saved_model', got {prefer!r}")
    version_dir = resolve_version(path, version)
    manifest = read_manifest(version_dir)
    target = LOADERS.get(manifest["kind"])
    if target is None:
        raise ValueError(f"{version_dir}: unknown model kind {manifest['kind']!r}; known: {sorted(LOADERS)}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(version_dir, manifest, prefer)
