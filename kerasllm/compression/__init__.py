"""Model compression with tensorflow-model-optimization: pruning, quantization-aware training,
post-training quantization and distillation, compared side by side in one report.

``compress(model, ...)`` dispatches on ``model.kind`` (see ``COMPRESSORS``), so another model
family plugs in with one entry: a function with the same signature returning a
``CompressionReport``. TensorFlow and tfmot are imported only inside the functions.
"""
from __future__ import annotations

import importlib

# model kind -> "module:function(model, train_texts, train_labels, validation, methods, **options)"
COMPRESSORS = {
    "classifier": "kerasllm.compression.classifier:compress_classifier",
    "language_model": "kerasllm.compression.language_model:compress_language_model",
}

METHODS = ("prune", "qat", "ptq_int8", "ptq_dynamic", "ptq_float16", "ptq_16x8", "distill")
DEFAULT_METHODS = ("prune", "qat", "ptq_int8", "ptq_dynamic", "ptq_float16", "distill")


def parse_methods(methods):
    """Validate method names; a combination is its steps joined with "+" (e.g. "prune+qat").

    Returns a list of tuples of steps. A post-training quantization step, if any, comes last,
    and there is at most one quantization (ptq_* or qat) per combination.
    """
    if isinstance(methods, str):
        methods = (methods,)
    parsed = []
    for method in methods:
        if not isinstance(method, str) or not method:
            raise ValueError(f"methods must be names from {METHODS} (or combinations joined with '+'), got {method!r}")
        steps = tuple(method.split("+"))
        unknown = [s for s in steps if s not in METHODS]
        if unknown:
            raise ValueError(f"unknown compression method {unknown[0]!r} in {method!r}; known: {METHODS}")
        quantizers = [s for s in steps if s == "qat" or s.startswith("ptq_")]
        if len(quantizers) > 1:
            raise ValueError(f"{method!r} quantizes twice ({', '.join(quantizers)}); use one of qat / ptq_*")
        if any(s.startswith("ptq_") for s in steps[:-1]):
            raise ValueError(f"{method!r}: post-training quantization must be the last step")
        if len(set(steps)) != len(steps):
            raise ValueError(f"{method!r} repeats a step")
        parsed.append(steps)
    if not parsed:
        raise ValueError(f"methods is empty; choose from {METHODS}")
    return parsed


def compress(model, train_texts, train_labels=None, validation=None, methods=DEFAULT_METHODS, **options):
    """Compress ``model`` every way in ``methods``; returns a ``CompressionReport``."""
    kind = getattr(model, "kind", None)
    target = COMPRESSORS.get(kind)
    if target is None:
        raise TypeError(f"cannot compress {type(model).__name__} (kind {kind!r}); "
                        f"supported kinds: {sorted(COMPRESSORS)}")
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)(
        model, train_texts, train_labels=train_labels, validation=validation, methods=methods, **options)
