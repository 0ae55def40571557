"""Small SavedModels for the serving tests and benchmark (no training): string and float signatures
named like the real ones (``serving_default`` classifier, ``generate``, ``query``)."""
from __future__ import annotations

from pathlib import Path

from kerasllm.export.layout import publish, write_json_atomic

LABELS = ["ham", "spam"]


def build_module(version_tag: int, work: int = 0):
    """``version_tag`` is returned by every call so tests can tell versions apart; ``work`` adds a fixed
    per-call cost (a matrix product chain) like a real model's per-call overhead."""
    from kerasllm._tf import tf

    class Demo(tf.Module):
        def __init__(self):
            super().__init__()
            self.tag = tf.Variable(version_tag, dtype=tf.int32, trainable=False)
            self.weight = tf.Variable(tf.eye(64) * 0.5, trainable=False)

        def _burn(self):
            m = tf.ones([64, 64])
            for _ in range(work):
                m = tf.tanh(tf.matmul(m, self.weight))
            return tf.reduce_sum(m) * 0.0

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def classify(self, texts):
            length = tf.cast(tf.strings.length(texts), tf.float32) + self._burn()
            spam = length / (length + 20.0)  # exactly rounded whatever the batch (a sigmoid is not)
            probabilities = tf.stack([1.0 - spam, spam], axis=1)
            label = tf.gather(tf.constant(LABELS), tf.argmax(probabilities, axis=1))
            return {"probabilities": probabilities, "label": label,
                    "version": tf.fill(tf.shape(texts), self.tag)}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x"),
                                      tf.TensorSpec([], tf.float32, name="factor")])
        def scale(self, x, factor):
            return {"y": x * factor, "total": tf.reduce_sum(x, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def count(self, texts):  # no batch dimension in the output: cannot be batched
            return {"n": tf.size(texts), "chars": tf.reduce_sum(tf.strings.length(texts))}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompts"),
                                      tf.TensorSpec([], tf.int32, name="max_new_tokens")])
        def generate(self, prompts, max_new_tokens):
            # prompt + continuation (as kerasllm's language models answer): " w<i>" counting on from the
            # prompt's word count, so generating in chunks gives the same text as in one go
            words = tf.strings.split(prompts)
            start = tf.cast(words.row_lengths(), tf.int32)
            steps = tf.range(max_new_tokens)
            numbers = tf.strings.as_string(start[:, None] + steps[None, :])
            return {"outputs": prompts + tf.strings.reduce_join(" w" + numbers, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def query(self, texts, k):
            length = tf.cast(tf.strings.length(texts), tf.int64)
            ids = length[:, None] + tf.range(tf.cast(k, tf.int64))[None, :]
            scores = 1.0 / (1.0 + tf.cast(tf.range(k), tf.float32))
            return {"ids": ids, "scores": tf.tile(scores[None, :], [tf.shape(texts)[0], 1])}

    return Demo()


def write_model(model_dir, version_tag: int, work: int = 0, version=None) -> Path:
    """Publish a demo SavedModel as a new version of ``model_dir`` (atomically, like the exporter)."""
    from kerasllm._tf import tf

    module = build_module(version_tag, work)

    def write(tmp):
        tf.saved_model.save(module, str(tmp), signatures={
            "serving_default": module.classify, "scale": module.scale, "count": module.count,
            "generate": module.generate, "query": module.query})
        write_json_atomic(Path(tmp) / "kerasllm.json", {"kind": "demo", "labels": LABELS})

    return publish(model_dir, write, version=version)


def build_batchable_module():
    """A model TF Serving can batch: every input and output of every signature has a batch dimension;
    ``encode_ids`` takes token ids of any width (like the similarity index's), so it needs padding."""
    from kerasllm._tf import tf

    class Batchable(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def classify(self, texts):
            length = tf.cast(tf.strings.length(texts), tf.float32)
            spam = length / (length + 20.0)
            return {"probabilities": tf.stack([1.0 - spam, spam], axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids")])
        def encode_ids(self, ids):
            return {"vector": tf.cast(tf.stack([tf.reduce_sum(ids, 1), tf.reduce_max(ids, 1)], 1), tf.float32)}

    return Batchable()


def write_batchable_model(model_dir, version=None) -> Path:
    from kerasllm._tf import tf

    module = build_batchable_module()

    def write(tmp):
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.classify,
                                                          "encode_ids": module.encode_ids})
        write_json_atomic(Path(tmp) / "kerasllm.json", {"kind": "demo", "labels": LABELS})

    return publish(model_dir, write, version=version)
