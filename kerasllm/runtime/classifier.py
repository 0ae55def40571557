"""Fast classifier predictors: TFLite (no TensorFlow import at all) or SavedModel, same API."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np

from kerasllm.export import TFLITE_FILE
from kerasllm.export import tflite as tflite_lib
from kerasllm.text.word import WordTokenizer, check_texts, fill_row


class TFLiteClassifier:
    """Python tokenizer + LiteRT interpreter (no TensorFlow import).

    Texts run the shortest length bucket they fit (``predict_<words>`` signatures: same answer,
    shorter recurrence), in a batch as in a single call: a batch is grouped by bucket; a group of
    fewer than ``block_sizes[0]`` texts runs text by text through the batch-1 interpreter, and larger
    groups run in blocks padded to the next of ``block_sizes`` (4, 8, ... 64), one interpreter per
    block size, so each signature keeps one fixed shape and no interpreter ever re-allocates its
    tensors. A few texts never run at a longer bucket than their own, nor in a second interpreter
    (measured: switching interpreters costs more than a batch of two or three saves).

    Threads: a LiteRT interpreter must not be used by two threads at once, so each thread that
    calls ``predict``/``predict_proba`` gets its own interpreters on its first call (LiteRT's
    advice). Cost: that first call loads the file again (milliseconds; once more for each block
    size the thread first uses) and each thread holds its own tensor arenas; calls then run in
    parallel with no lock and one-text latency is unchanged. The tokenizer is shared (its cache
    is a dict written under the GIL).

    Cost of one SMS-length text (p50 per stage, one core, a stream of SMS texts of mixed lengths;
    ``benchmarks/classifier_latency.py`` prints the breakdown): tokenizing (regex split, then each
    token's cached word and n-gram ids) ~5-9 us; writing the int32 row ~2.5 us; the interpreter
    (set the input, invoke the bucket's subgraph, copy the 2-class output out; called directly, not
    through a SignatureRunner, which re-checks shapes and re-allocates each call) ~11 us at the
    8-word bucket to ~26 us at 43 words, most of it the unrolled recurrence; checks, bucket choice
    and the label ~2 us. The interpreter's time depends as much on the CPU caches as on the
    arithmetic: a stream that mixes buckets pays to bring each bucket's graph back, so the
    export keeps few buckets (``kerasllm.export.classifier.length_buckets``).
    """

    block_sizes = (4, 8, 16, 32, 64)  # a group of fewer texts than the first runs at batch 1

    def __init__(self, tflite_path, num_threads=1):
        config = tflite_lib.read_attached(tflite_path)
        if config.get("kind") != "classifier":
            raise ValueError(f"{tflite_path} holds a {config.get('kind')!r} model, not a classifier")
        self.path, self.num_threads = str(tflite_path), num_threads
        self.classes = list(config["labels"])
        self.tokenizer = WordTokenizer.from_config(config["tokenizer"])
        self.buckets = [tuple(b) for b in config["buckets"]]
        self._local = threading.local()
        self._state()  # fail now, not on the first call, if the file is not a working model

    def _state(self):
        state = getattr(self._local, "state", None)
        if state is None:
            single = tflite_lib.interpreter(self.path, self.num_threads)
            state = self._local.state = SimpleNamespace(
                single=[(n, tflite_lib.direct_call(single, f"predict_{n}", "token_ids", "probabilities"),
                         np.zeros((1, n + g), np.int32)) for n, g in self.buckets],
                interpreters={}, runners={})
        return state

    def _bucket(self, words, grams):
        for i, (n, g) in enumerate(self.buckets):
            if len(words) <= n and len(grams) <= g:
                return i
        return len(self.buckets) - 1  # the tokenizer truncates to the last bucket: it always fits

    def _predict_one(self, text, state):
        words, grams = self.tokenizer.ids_one(text)
        return self._run_one(words, grams, self._bucket(words, grams), state)

    @staticmethod
    def _run_one(words, grams, bucket, state):
        """Probabilities [1, classes] of one encoded text through the batch-1 interpreter."""
        n, call, row = state.single[bucket]
        fill_row(row[0], words, grams, n)
        return call(row)

    def _block_runner(self, state, bucket, rows):
        """(runner, block array) for bucket ``bucket`` at the smallest block size >= ``rows``."""
        size = next(s for s in self.block_sizes if s >= rows)
        runner = state.runners.get((size, bucket))
        if runner is None:
            interpreter = state.interpreters.get(size)
            if interpreter is None:
                interpreter = state.interpreters[size] = tflite_lib.interpreter(self.path, self.num_threads)
            n, g = self.buckets[bucket]
            runner = state.runners[(size, bucket)] = (interpreter.get_signature_runner(f"predict_{n}"),
                                                     np.zeros((size, n + g), np.int32))
        return runner

    def predict_proba(self, texts):
        texts = check_texts(texts)
        state = self._state()
        if len(texts) == 1:
            return self._predict_one(texts[0], state)  # a new array: the interpreter's output copied
        out = np.empty((len(texts), len(self.classes)), np.float32)
        encoded = [self.tokenizer.ids_one(text) for text in texts]
        groups = {}
        for row, (words, grams) in enumerate(encoded):
            groups.setdefault(self._bucket(words, grams), []).append(row)
        top = self.block_sizes[-1]
        for i, rows in groups.items():
            n = self.buckets[i][0]
            if len(rows) < self.block_sizes[0]:
                for row in rows:
                    out[row] = self._run_one(*encoded[row], i, state)[0]
                continue
            for start in range(0, len(rows), top):
                chunk = rows[start:start + top]
                runner, block = self._block_runner(state, i, len(chunk))
                block[len(chunk):] = 0
                for j, row in enumerate(chunk):
                    fill_row(block[j], *encoded[row], n)
                out[chunk] = runner(token_ids=block)["probabilities"][: len(chunk)]
        return out

    def predict(self, texts):
        return [self.classes[i] for i in self.predict_proba(texts).argmax(axis=1).tolist()]


class SavedModelClassifier:
    """The SavedModel's ``serving_default`` signature: raw strings in, tokenized in-graph.

    The signature pads each call to one of a few batch sizes before its XLA-compiled part (see
    ``kerasllm.export.classifier.SERVING_BATCH_SIZES``); larger inputs go in chunks of the largest,
    so XLA compiles a handful of shapes in all. TensorFlow functions may be called from several
    threads at once (no lock here).
    """

    chunk = 256

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
        return np.concatenate([
            self._serve(texts=self._tf.constant(texts[i:i + self.chunk], self._tf.string))["probabilities"].numpy()
            for i in range(0, len(texts), self.chunk)])

    def predict(self, texts):
        return [self.classes[i] for i in self.predict_proba(texts).argmax(axis=1)]


def load(version_dir, manifest, prefer="tflite"):
    formats = manifest.get("formats", [])
    use_tflite = "tflite" in formats and (prefer == "tflite" or "saved_model" not in formats)
    if use_tflite:
        return TFLiteClassifier(version_dir / TFLITE_FILE)
    return SavedModelClassifier(version_dir, manifest["labels"])
