"""Fast classifier predictors: TFLite (no TensorFlow import at all) or SavedModel, same API."""
from __future__ import annotations

import numpy as np

from kerasllm.export import TFLITE_FILE
from kerasllm.export import tflite as tflite_lib
from kerasllm.text.word import WordTokenizer, check_texts, fill_row


class TFLiteClassifier:
    """Python tokenizer + LiteRT interpreter (no TensorFlow import).

    A single text runs the shortest length bucket it fits (``predict_<words>`` signatures: same
    answer, shorter recurrence). Batches run the full-length signature on a second interpreter
    sized for ``batch_size`` rows, so neither interpreter ever re-allocates its tensors.
    """

    batch_size = 64

    def __init__(self, tflite_path, num_threads=1):
        config = tflite_lib.read_attached(tflite_path)
        if config.get("kind") != "classifier":
            raise ValueError(f"{tflite_path} holds a {config.get('kind')!r} model, not a classifier")
        self.path, self.num_threads = str(tflite_path), num_threads
        self.classes = list(config["labels"])
        self.tokenizer = WordTokenizer.from_config(config["tokenizer"])
        self.buckets = [tuple(b) for b in config["buckets"]]
        single = tflite_lib.interpreter(self.path, num_threads)
        self._single = [(n, g, single.get_signature_runner(f"predict_{n}"), np.zeros((1, n + g), np.int32))
                        for n, g in self.buckets]
        self._batch = None

    def _predict_one(self, text):
        words, grams = self.tokenizer.ids_one(text)
        for n, g, runner, row in self._single:
            if len(words) <= n and len(grams) <= g:
                break
        fill_row(row[0], words, grams, n)
        return runner(token_ids=row)["probabilities"]

    def predict_proba(self, texts):
        texts = check_texts(texts)
        if len(texts) == 1:
            return self._predict_one(texts[0]).copy()
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32)
        if self._batch is None:
            n, _ = self.buckets[-1]
            self._batch = tflite_lib.interpreter(self.path, self.num_threads).get_signature_runner(f"predict_{n}")
        ids = self.tokenizer.encode(texts)
        out = np.empty((len(texts), len(self.classes)), np.float32)
        block = np.zeros((self.batch_size, ids.shape[1]), np.int32)
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            block[: len(chunk)] = chunk
            block[len(chunk):] = 0
            out[start:start + len(chunk)] = self._batch(token_ids=block)["probabilities"][: len(chunk)]
        return out

    def predict(self, texts):
        return [self.classes[i] for i in self.predict_proba(texts).argmax(axis=1)]


class SavedModelClassifier:
    """The SavedModel's ``serving_default`` signature: raw strings in, tokenized in-graph."""

    def __init__(self, version_dir, labels):
        from kerasllm._tf import tf

        self._tf = tf
        self._model = tf.saved_model.load(str(version_dir))
        self._serve = self._model.signatures["serving_default"]
        self.classes = list(labels)

    def predict_proba(self, texts):
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32)
        return self._serve(texts=self._tf.constant(texts, self._tf.string))["probabilities"].numpy()

    def predict(self, texts):
        return [self.classes[i] for i in self.predict_proba(texts).argmax(axis=1)]


def load(version_dir, manifest, prefer="tflite"):
    formats = manifest.get("formats", [])
    use_tflite = "tflite" in formats and (prefer == "tflite" or "saved_model" not in formats)
    if use_tflite:
        return TFLiteClassifier(version_dir / TFLITE_FILE)
    return SavedModelClassifier(version_dir, manifest["labels"])
