"""A compressed classifier: its converted TFLite bytes plus the classifier they came from."""
from __future__ import annotations

import gzip
import tempfile
from pathlib import Path

from kerasllm.compression.ptq import mode_name


class FlatbufferSizes:
    """Sizes of a compressed variant's ``flatbuffer``: raw, and gzip-compressed (what sparsity buys)."""

    @property
    def tflite_bytes(self):
        return len(self.flatbuffer)

    @property
    def gzip_bytes(self):
        return len(gzip.compress(self.flatbuffer, 9))


class ClassifierVariant(FlatbufferSizes):
    """One row of a compression report, exportable with ``kerasllm.export`` / ``tasks.export``.

    ``classifier``: the (possibly pruned, QAT-trained or distilled) ``TextClassifier`` the TFLite
    bytes were converted from; ``quantization``: the mode actually used (after any fallback);
    ``notes``: what happened on the way (fallbacks); ``info``: per-method facts (sparsity per
    layer, quantized layers, student size).
    """

    kind = "classifier"

    def __init__(self, name, classifier, flatbuffer, quantization, buckets=None, notes=(), info=None):
        self.name, self.classifier, self.flatbuffer = name, classifier, bytes(flatbuffer)
        self.quantization, self.buckets = quantization, buckets
        self.notes, self.info = list(notes), dict(info or {})
        self._runtime = self._tmp = None

    def __repr__(self):
        return (f"ClassifierVariant({self.name!r}, {mode_name(self.quantization)}, "
                f"{len(self.flatbuffer)} TFLite bytes)")

    @property
    def classes(self):
        return self.classifier.classes

    def export_artifacts(self, directory, formats, **options):
        from kerasllm.export.classifier import write_saved_model, write_tflite

        if options:
            raise TypeError(f"a compressed variant is already converted; unexpected export options {sorted(options)}")
        extra = {"labels": self.classes, "max_length": self.classifier.config.max_length,
                 "compression": {"method": self.name, "quantization": mode_name(self.quantization),
                                 "notes": self.notes}}
        if "saved_model" in formats:
            if self.quantization is not None:
                raise ValueError(f"variant {self.name!r} is {self.quantization}-quantized and exists only as TFLite; "
                                 "export it with formats=('tflite',)")
            write_saved_model(self.classifier, directory)
        if "tflite" in formats:
            extra["tflite_quantization"] = write_tflite(self.classifier, directory, self.quantization,
                                                        buckets=self.buckets, flatbuffer=self.flatbuffer)
        return extra

    def runtime(self):
        """The classifier runtime (``TFLiteClassifier``) over this variant's TFLite bytes."""
        if self._runtime is None:
            from kerasllm.export.classifier import write_tflite
            from kerasllm.runtime.classifier import TFLiteClassifier

            self._tmp = tempfile.TemporaryDirectory(prefix="kerasllm-variant-")
            write_tflite(self.classifier, self._tmp.name, self.quantization, buckets=self.buckets,
                         flatbuffer=self.flatbuffer)
            self._runtime = TFLiteClassifier(Path(self._tmp.name) / "model.tflite")
        return self._runtime

    def predict_proba(self, texts):
        return self.runtime().predict_proba(texts)

    def predict(self, texts):
        return self.runtime().predict(texts)

    def evaluate(self, texts, labels):
        from kerasllm.models.classifier import classification_metrics

        from kerasllm.models.classifier import check_labels

        return classification_metrics(check_labels(labels, len(texts)), self.predict(texts), self.classes)
