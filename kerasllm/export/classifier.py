"""Classifier export: an XLA-compiled SavedModel that takes raw strings, and a TFLite file that
takes token ids and carries its tokenizer and labels."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm._tf import tf
from kerasllm.export import TFLITE_FILE
from kerasllm.export import tflite as tflite_lib
from kerasllm.models.classifier import build_model, input_width
from kerasllm.text.word import fill_row
from kerasllm.text.word_graph import GraphWordTokenizer


class ClassifierModule(tf.Module):
    """What the SavedModel holds: the in-graph tokenizer, the Keras model and the labels."""

    def __init__(self, clf):
        super().__init__(name="classifier")
        self.tokenizer = GraphWordTokenizer(clf.tokenizer)
        self.model = clf.model
        self.labels = tf.constant(clf.classes)
        ids_spec = tf.TensorSpec([None, input_width(clf.config)], tf.int32, name="token_ids")
        # String ops cannot be XLA-compiled: tokenize in a plain graph, then run the model under XLA.
        self._probabilities = tf.function(lambda ids: self.model(ids, training=False),
                                          input_signature=[ids_spec], jit_compile=True)
        self.serve = tf.function(self._serve, input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        self.predict_ids = tf.function(self._predict_ids, input_signature=[ids_spec])

    def _outputs(self, probs):
        return {"probabilities": probs, "label": tf.gather(self.labels, tf.argmax(probs, axis=1))}

    def _serve(self, texts):
        return self._outputs(self._probabilities(self.tokenizer(texts)))

    def _predict_ids(self, token_ids):
        return self._outputs(self._probabilities(token_ids))


def write_saved_model(clf, directory):
    module = ClassifierModule(clf)
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": module.serve, "predict_ids": module.predict_ids})


def length_buckets(config):
    """Word lengths with a TFLite signature each: short texts run a short unrolled recurrence."""
    buckets = [n for n in (8, 16, 32, 64, 128, 256) if n < config.max_length] + [config.max_length]
    return [(n, bucket_grams(config, n)) for n in buckets]


def bucket_grams(config, n_words):
    return -(-config.max_char_grams * n_words // config.max_length) if config.char_ngrams else 0


def tflite_bytes(clf, quantization=None, representative_texts=None, model=None, buckets=None):
    """TFLite bytes with one signature per length bucket, ``predict_<words>``: token_ids in,
    probabilities out. The bucket models share the trained layers, so the weights are stored once.

    ``model``: convert this Keras model (same input as ``clf.model``) as one full-length
    signature instead, e.g. a compressed variant whose layers differ.
    ``buckets``: the (words, char grams) buckets to convert; default ``length_buckets(clf.config)``.
    With a single signature the converter names it ``serving_default``.
    """
    cfg = clf.config
    buckets = length_buckets(cfg) if buckets is None else [tuple(b) for b in buckets]
    holder = tf.Module()
    holder.model = clf.model if model is None else model
    if model is not None:
        twins = {f"predict_{cfg.max_length}": (model, cfg.max_length, cfg.max_char_grams)}
    elif FoldedSimpleRNN.applies(cfg):
        holder.folded = FoldedSimpleRNN(clf.model, cfg)
        twins = {f"predict_{n}": (lambda ids, n=n: holder.folded(ids, n), n, g) for n, g in buckets}
    else:
        twins = {}
        for n_words, n_grams in buckets:
            twin = build_model(cfg, unroll=True, max_length=n_words, max_char_grams=n_grams, share=clf.model)
            twins[f"predict_{n_words}"] = (twin, n_words, n_grams)
        holder.twins = [twin for twin, _, _ in twins.values()]
    functions = []
    for key, (twin, n_words, n_grams) in twins.items():
        spec = tf.TensorSpec([None, input_width(cfg, n_words, n_grams)], tf.int32, name="token_ids")

        def predict(token_ids, twin=twin):
            return {"probabilities": twin(token_ids)}

        predict.__name__ = key  # the signature's name in the .tflite
        functions.append(tf.function(predict, input_signature=[spec]).get_concrete_function())
    representative = None
    if quantization in ("int8", "16x8"):
        if not representative_texts:
            raise ValueError(f"{quantization} quantization needs representative_texts (a sample of training texts)")
        sample = [clf.tokenizer.ids_one(t) for t in list(representative_texts)[:300]]

        def representative():
            for key, (_, n_words, n_grams) in twins.items():
                row = np.zeros((1, input_width(cfg, n_words, n_grams)), np.int32)
                for words, grams in sample:
                    fill_row(row[0], words[:n_words], grams[:n_grams], n_words)
                    # one function converts to one signature named serving_default
                    yield key if len(twins) > 1 else "serving_default", {"token_ids": row.copy()}
    flatbuffer = tflite_lib.convert(functions, holder, quantization, representative)
    if len(twins) == 1:
        from kerasllm.export.flatbuffer import rename_signatures

        flatbuffer = rename_signatures(flatbuffer, {"serving_default": next(iter(twins))})
    return flatbuffer


class FoldedSimpleRNN(tf.Module):
    """The default classifier (one-way SimpleRNN, last state) lowered by hand for TFLite, same math.

    Keras' unrolled, masked SimpleRNN costs 8 TFLite ops a step (two matmuls, a mask tile and two
    selects among them). Here the input projection is folded into the embedding table
    (``E @ W + b``, one gather for all steps) and padding is handled once at the end by taking the
    state at the last real word, so a step is 3 ops: matmul, add, tanh.
    """

    @staticmethod
    def applies(cfg):
        return cfg.architecture == "simple_rnn" and not cfg.bidirectional and cfg.pooling == "last"

    def __init__(self, model, cfg):
        super().__init__(name="folded_simple_rnn")
        cell = model.get_layer("simple_rnn").cell
        embeddings = model.get_layer("embedding").embeddings
        self.projected = tf.Variable(tf.matmul(embeddings, cell.kernel) + cell.bias, trainable=False,
                                     name="projected_embeddings")
        self.recurrent = cell.recurrent_kernel
        self.logits = model.get_layer("rnn_logits")
        self.cfg, self.model = cfg, model

    def __call__(self, ids, n_words):
        words = ids[:, :n_words]
        inputs = tf.unstack(tf.gather(self.projected, words), axis=1)
        h = tf.tanh(inputs[0])  # the first step's state input is zero
        states = [h]
        for x in inputs[1:]:
            h = tf.tanh(x + tf.matmul(h, self.recurrent))
            states.append(h)
        length = tf.reduce_sum(tf.cast(words > 0, tf.int32), axis=1)
        last = tf.gather(tf.stack(states, axis=1), tf.maximum(length - 1, 0), batch_dims=1)
        last = last * tf.cast(length > 0, last.dtype)[:, None]  # an empty text keeps the zero state
        logits = self.logits(last)
        if self.cfg.bag_of_ngrams:
            layer = self.model.get_layer
            grams = tf.concat([ids, layer("bigrams")(words)], axis=1)
            bag = layer("bag_of_ngrams")([layer("ngram_logits_table")(grams), grams])
            logits = logits + layer("bag_scale")(bag)
        return tf.nn.softmax(logits)


def tflite_config(clf, quantization=None, model=None, buckets=None):
    """The config attached to the classifier's .tflite (what ``TFLiteClassifier`` reads)."""
    if buckets is None:
        buckets = length_buckets(clf.config) if model is None else [
            (clf.config.max_length, clf.config.max_char_grams if clf.config.char_ngrams else 0)]
    return {"kind": "classifier", "labels": clf.classes, "tokenizer": clf.tokenizer.get_config(),
            "quantization": quantization, "buckets": [[int(n), int(g)] for n, g in buckets]}


def write_tflite(clf, directory, quantization=None, representative_texts=None, model=None, buckets=None,
                 flatbuffer=None):
    """``model.tflite`` in ``directory``; ``flatbuffer``: already converted bytes to write."""
    if flatbuffer is None:
        flatbuffer = tflite_bytes(clf, quantization, representative_texts, model, buckets)
    path = Path(directory) / TFLITE_FILE
    path.write_bytes(tflite_lib.attach(flatbuffer, tflite_config(clf, quantization, model, buckets)))
    return quantization

