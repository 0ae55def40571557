"""A classifier-shaped SavedModel for the serving benchmark: raw strings -> word ids (in-graph tokenizer)
-> embedding -> SimpleRNN -> softmax, the core XLA-compiled, random weights (no training: the benchmark
measures serving, not accuracy). Same signature as kerasllm's classifier export, plus a ``version`` output
so the benchmark can see which version answered."""
from __future__ import annotations

from pathlib import Path

from kerasllm.export.layout import publish, write_json_atomic

LABELS = ["ham", "spam"]


def write_classifier(model_dir, version_tag=1, warmup_sizes=(1,), publish_now=True, **kwargs):
    """Publish a new version under ``model_dir``; with ``publish_now=False`` write it into a hidden
    ``.tmp-`` folder there (invisible to servers) and return that folder, for ``os.rename`` later."""
    def write(tmp):
        build_classifier(tmp, Path(model_dir).name, version_tag, warmup_sizes=warmup_sizes, **kwargs)

    if publish_now:
        return publish(model_dir, write)
    staging = Path(model_dir) / f".tmp-staged-{version_tag}"
    write(staging)
    return staging


def build_classifier(directory, model_name, version_tag=1, vocab_texts=None, max_length=48, units=128,
                     warmup_sizes=(1,)):
    from kerasllm._tf import keras, tf
    from kerasllm.data import default_documents
    from kerasllm.export.tf_serving import write_warmup_requests
    from kerasllm.text.word import WordTokenizer
    from kerasllm.text.word_graph import GraphWordTokenizer

    texts = vocab_texts or default_documents()[0]
    tokenizer = WordTokenizer(max_length=max_length).fit(texts, max_tokens=8000)
    keras.utils.set_random_seed(version_tag)
    model = keras.Sequential([keras.layers.Embedding(tokenizer.vocab_size, 64),
                              keras.layers.SimpleRNN(units), keras.layers.Dense(len(LABELS), activation="softmax")])
    model.build((None, max_length))

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.tokenizer = GraphWordTokenizer(tokenizer)
            self.model = model
            self.tag = tf.Variable(version_tag, dtype=tf.int32, trainable=False)

        @tf.function(jit_compile=True)
        def core(self, ids):
            return self.model(ids, training=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def serve(self, texts):
            probabilities = self.core(self.tokenizer(texts))
            label = tf.gather(tf.constant(LABELS), tf.argmax(probabilities, axis=1))
            return {"probabilities": probabilities, "label": label, "version": tf.fill(tf.shape(texts), self.tag)}

    module = Classifier()
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    write_json_atomic(Path(directory) / "kerasllm.json", {"kind": "benchmark_classifier", "labels": LABELS})
    write_warmup_requests(directory, model_name, batch_sizes=warmup_sizes)
