"""Runtime for exported similarity indexes: ``kerasllm.load(path)`` on a ``similarity_index`` export.

The encoder runs from the export (TFLite by default, or the XLA SavedModel); the search runs in
NumPy over the document vectors of the saved ``index/``, memory-mapped so a large index is not
read into memory twice.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm.export import TFLITE_FILE
from kerasllm.models.similarity import SimilarityIndex, search
from kerasllm.text.tfidf import bucket_width
from kerasllm.text.word import check_texts


_BATCH = 256


def load(version_dir, manifest, prefer="tflite"):
    return SimilarityPredictor(version_dir, manifest, prefer)


class SimilarityPredictor:
    """``embed``, ``query`` and ``similarity`` over an exported similarity index."""

    def __init__(self, version_dir, manifest, prefer="tflite"):
        version_dir = Path(version_dir)
        self.index = SimilarityIndex.load(version_dir / manifest.get("index", "index"), mmap=True)
        self.features = self.index.features
        formats = manifest.get("formats", [])
        use_tflite = "tflite" in formats and (prefer == "tflite" or "saved_model" not in formats)
        self.backend = "tflite" if use_tflite else "saved_model"
        if use_tflite:
            from kerasllm.export.tflite import interpreter

            self._interpreter = interpreter(version_dir / TFLITE_FILE)
            details = {d["name"]: d["index"] for d in self._interpreter.get_input_details()}
            self._inputs = (_find(details, "ids"), _find(details, "weights"))
            self._output = self._interpreter.get_output_details()[0]["index"]
            self._shape = None
        else:
            from kerasllm._tf import tf

            self._tf = tf
            self._model = tf.saved_model.load(str(version_dir))
            self._embed = self._model.signatures["serving_default"]

    def __len__(self):
        return len(self.index)

    def embed(self, texts):
        """float32 [len(texts), k] unit vectors, computed by the exported encoder."""
        texts = check_texts(texts)
        # Batches bound the encoder's [batch, width, k] gather.
        parts = [self._embed_batch(texts[i:i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.index.dimensions), np.float32)

    def _embed_batch(self, texts):
        if self.backend == "saved_model":
            return self._embed(texts=self._tf.constant(texts))["embedding"].numpy()
        ids, weights = self.features.ids_and_weights(texts)
        width = bucket_width(ids.shape[1])  # few distinct shapes: the interpreter re-plans on each new one
        ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])))
        weights = np.pad(weights, ((0, 0), (0, width - weights.shape[1])))
        interp = self._interpreter
        if self._shape != ids.shape:
            interp.resize_tensor_input(self._inputs[0], ids.shape)
            interp.resize_tensor_input(self._inputs[1], ids.shape)
            interp.allocate_tensors()
            self._shape = ids.shape
        interp.set_tensor(self._inputs[0], ids)
        interp.set_tensor(self._inputs[1], weights)
        interp.invoke()
        return interp.get_tensor(self._output).copy()

    def query(self, texts, k=10):
        """For each text, ``min(k, len(index))`` (id, cosine) pairs, best first."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return search(self.index.vectors, self.index.ids, self.embed(texts), k, self.index._int8)

    def similarity(self, texts_a, texts_b):
        return self.embed(check_texts(texts_a, "texts_a")) @ self.embed(check_texts(texts_b, "texts_b")).T


def _find(details, name):
    for key, index in details.items():
        if name in key:
            return index
    raise ValueError(f"the TFLite encoder has no input named like {name!r}: {sorted(details)}")
