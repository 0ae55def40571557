"""Classifier export: an XLA-compiled SavedModel that takes raw strings, and a TFLite file that
takes token ids and carries its tokenizer and labels.

Both run the model maths of ``kerasllm.models.classifier_layers`` (``ClassifierParts``); this
module only chooses shapes (length buckets, batch sizes) and folds the recurrent input projection
into the embedding table. It never imports ``kerasllm.models.classifier``: the classifier object
is passed in (``config``, ``tokenizer``, ``model``, ``classes``).

TFLite ids layout (one signature per length bucket, ``predict_<n>``; the buckets are listed in the
attached config as ``[n words, g char-grams]``): int32 ``token_ids [batch, n + g]``; columns
``0..n-1`` hold the text's word ids in order, ``n..n+g-1`` its character n-gram ids (bag path
only); 0 is padding. Word id 1 is an unknown word, 2 an unknown short number, 3 an unknown long
number, 4 an unknown word with digits; n-grams outside the vocabulary are left out.
``WordTokenizer.encode`` pads on the right; padding anywhere else in a section (e.g. on the
left) gives the same probabilities, because every layer skips id 0. The recurrent path reads the
row's first ``recurrent_length`` word ids (attached config), wherever the padding is; the bag all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kerasllm._tf import tf
from kerasllm.export import TFLITE_FILE
from kerasllm.export import tflite as tflite_lib
from kerasllm.models.classifier_layers import input_width, model_parts, recurrent_words
from kerasllm.text.word import fill_row
from kerasllm.text.word_graph import GraphWordTokenizer

# The XLA signature runs padded to one of these batch sizes (else a multiple of the last), so
# XLA compiles a handful of shapes instead of one per batch size it is sent.
SERVING_BATCH_SIZES = (1, 8, 64, 256)


def padded_batch_size(n, sizes=SERVING_BATCH_SIZES):
    """The batch size ``n`` rows run at (works on ints and on scalar tensors)."""
    top = sizes[-1]
    rounded = (n + top - 1) // top * top
    if isinstance(n, int):
        return next((s for s in sizes if s >= n), rounded)
    return tf.reduce_min(tf.where(tf.constant(sizes) >= n, tf.constant(sizes), rounded))


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

    def _padded_probabilities(self, ids):
        n = tf.shape(ids)[0]
        padded = tf.pad(ids, [[0, padded_batch_size(n) - n], [0, 0]])
        return self._probabilities(padded)[:n]

    def _outputs(self, probs):
        return {"probabilities": probs, "label": tf.gather(self.labels, tf.argmax(probs, axis=1))}

    def _serve(self, texts):
        return self._outputs(self._padded_probabilities(self.tokenizer(texts)))

    def _predict_ids(self, token_ids):
        return self._outputs(self._padded_probabilities(token_ids))


def write_saved_model(clf, directory):
    module = ClassifierModule(clf)
    tf.saved_model.save(module, str(directory),
                        signatures={"serving_default": module.serve, "predict_ids": module.predict_ids})


def length_buckets(config):
    """(words, char grams) per TFLite signature: short texts run a short unrolled recurrence.

    Few buckets (8, 24, 48, 96, 192, 512, then max_length): each signature is its own unrolled graph
    with its own operators and packed weights, and in a stream of mixed lengths every bucket's
    graph must come back into the CPU caches. Measured on SMS texts (one text a call, one core):
    at max_length 43, buckets 8/24/43 ran 0.89x the time of 8/16/32/43 end to end (p90 0.79x),
    though a 9-16 word text runs 24 steps instead of 16; 8/12/16/24/32/43 ran 1.15x. At max_length
    72 (the 99th percentile of SMS lengths), 8/24/48/72 gave a p50 of 50 us against 69 us for
    8/24/72: past 24 words the steps a text wastes cost more than one more graph.
    """
    buckets = [n for n in (8, 24, 48, 96, 192, 512) if n < config.max_length] + [config.max_length]
    return [(n, bucket_grams(config, n)) for n in buckets]


def bucket_grams(config, n_words):
    if not (config.bag_of_ngrams and config.char_ngrams):
        return 0
    return -(-config.max_char_grams * n_words // config.max_length)


class _Lowered(tf.Module):
    """The classifier at each length bucket, for conversion; holds the folded tables (the recurrent
    input projection, and the bag table with its IDF weights)."""

    def __init__(self, clf):
        super().__init__(name="lowered_classifier")
        self.model = clf.model
        self.parts = model_parts(clf.model)
        folded, bag = self.parts.fold(), self.parts.bag_fold()
        self.folded = None if folded is None else tf.Variable(folded, trainable=False, name="folded_projection")
        self.bag_folded = None if bag is None else tf.Variable(bag, trainable=False, name="folded_bag")

    def __call__(self, ids, n_words):
        return tf.nn.softmax(self.parts.logits(ids, n_words, training=False, folded=self.folded,
                                               bag_folded=self.bag_folded))


def tflite_bytes(clf, quantization=None, representative_texts=None, model=None, buckets=None):
    """TFLite bytes with one signature per length bucket, ``predict_<words>``: token_ids in,
    probabilities out. The bucket functions share the trained weights, stored once.

    ``model``: convert this Keras model (same input as ``clf.model``) as one full-length
    signature instead, e.g. a compressed variant whose layers differ (so is a model that
    ``build_model`` did not make). ``buckets``: the (words, char grams) buckets to convert;
    default ``length_buckets(clf.config)``. With a single signature the converter names it
    ``serving_default``.
    """
    cfg = clf.config
    buckets = length_buckets(cfg) if buckets is None else [tuple(b) for b in buckets]
    if model is None and model_parts(clf.model) is None:
        model = clf.model
    holder = tf.Module()
    if model is not None:
        holder.model = model
        twins = {f"predict_{cfg.max_length}": (lambda ids: model(ids, training=False), cfg.max_length,
                                               bucket_grams(cfg, cfg.max_length))}
    else:
        holder.lowered = lowered = _Lowered(clf)
        twins = {f"predict_{n}": (lambda ids, n=n: lowered(ids, n), n, g) for n, g in buckets}
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


def tflite_config(clf, quantization=None, model=None, buckets=None):
    """The config attached to the classifier's .tflite (what ``TFLiteClassifier`` reads)."""
    cfg = clf.config
    if buckets is None:
        whole = model is not None or model_parts(clf.model) is None
        buckets = [(cfg.max_length, bucket_grams(cfg, cfg.max_length))] if whole else length_buckets(cfg)
    return {"kind": "classifier", "labels": clf.classes, "tokenizer": clf.tokenizer.get_config(),
            "quantization": quantization, "buckets": [[int(n), int(g)] for n, g in buckets],
            "recurrent_length": int(recurrent_words(cfg)),
            "ids_layout": "word ids then char n-gram ids per row; 0 = padding, any side; see kerasllm.export.classifier"}


def write_tflite(clf, directory, quantization=None, representative_texts=None, model=None, buckets=None,
                 flatbuffer=None):
    """``model.tflite`` in ``directory``; ``flatbuffer``: already converted bytes to write."""
    if flatbuffer is None:
        flatbuffer = tflite_bytes(clf, quantization, representative_texts, model, buckets)
    path = Path(directory) / TFLITE_FILE
    path.write_bytes(tflite_lib.attach(flatbuffer, tflite_config(clf, quantization, model, buckets)))
    return quantization
