"""Export of a similarity index: encoders (text -> unit vector) as an XLA SavedModel and as TFLite.

- SavedModel (TF Serving): ``serving_default`` takes ``texts`` (string [batch]) and returns
  ``embedding``; ``top_k`` takes ``texts`` and ``k`` (int32 scalar, per request; more than the
  index holds returns all) and returns ``ids`` (string), ``indices`` and ``scores`` of the k best
  documents against the stored index (equal scores in document order, as ``tf.math.top_k`` ranks);
  ``encode_ids`` takes the TFLite encoder's inputs. String ops
  (tokens, n-grams, lookups) run in a plain tf.function; the numeric part is jit-compiled by XLA.
- TFLite: ``ids`` int32 [batch, width] and ``weights`` float32 [batch, width] (from
  ``TfidfFeatures.ids_and_weights``) -> ``embedding``. TFLite has no string ops, so the Python
  runtime builds these inputs with the same tokenizer. The vocabulary and idf travel inside the file.
- ``index/``: the saved index (vocabulary, idf, vectors, ids), which the runtime searches with NumPy.
"""
from __future__ import annotations

import io
import json

import numpy as np

from kerasllm.export import TFLITE_FILE

INDEX_DIR = "index"
DEFAULT_TOP_K = 10
# A flatbuffer cannot exceed 2 GiB; leave room for the graph and the attached vocabulary.
TFLITE_MAX_BYTES = (2 << 30) - (64 << 20)


def build_module(index):
    """A tf.Module with the encoder functions and the stored document vectors."""
    from kerasllm._tf import tf
    from kerasllm.text.tfidf_graph import GraphTfidfFeatures

    class SimilarityModule(tf.Module):
        def __init__(self):
            super().__init__(name="similarity_index")
            self.featurizer = GraphTfidfFeatures(index.features_)
            self.components = tf.Variable(index.components_, trainable=False, name="components")
            self.vectors = tf.Variable(np.asarray(index.vectors_), trainable=False, name="vectors")
            self.ids = tf.Variable([str(i) for i in index.ids_], trainable=False, dtype=tf.string, name="ids")
            self.n = len(index)

        @tf.function(jit_compile=True)
        def encode_numeric(self, ids, weights):
            # sum_j w_j * V[feature_j], then unit length (the zero vector stays zero)
            rows = tf.gather(self.components, ids)  # [batch, width, k]
            return tf.math.l2_normalize(tf.einsum("bw,bwk->bk", weights, rows), axis=1)

        @tf.function(jit_compile=True)
        def scores(self, ids, weights):
            vectors = self.encode_numeric(ids, weights)
            return vectors, tf.matmul(vectors, tf.cast(self.vectors, tf.float32), transpose_b=True)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts")])
        def embed(self, texts):
            ids, weights = self.featurizer(texts)
            return {"embedding": self.encode_numeric(ids, weights)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="texts"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def search(self, texts, k):
            tf.debugging.assert_positive(k, message="k must be a positive int")
            ids, weights = self.featurizer(texts)
            vectors, scores = self.scores(ids, weights)
            best, indices = tf.math.top_k(scores, k=tf.minimum(k, self.n))  # ties: lower index first
            return {"ids": tf.gather(self.ids, indices), "indices": indices, "scores": best, "embedding": vectors}

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"),
                                      tf.TensorSpec([None, None], tf.float32, name="weights")])
        def encode_ids(self, ids, weights):
            return {"embedding": self.encode_numeric(ids, weights)}

    return SimilarityModule()


def check_tflite_fits(index):
    """Refuse, naming the fix, an encoder whose constants cannot fit one TFLite flatbuffer (2 GiB)."""
    components = index.components_.nbytes
    vocabulary = sum(len(f.encode("utf-8")) + 4 for f in index.features_.vocabulary)
    need = components + vocabulary + index.features_.idf.nbytes
    if need > TFLITE_MAX_BYTES:
        features, k = index.components_.shape
        raise ValueError(f"the TFLite encoder cannot hold this index: components [{features} features x {k}] and the "
                         f"vocabulary need {need / 2**30:.2f} GiB, above the 2 GiB flatbuffer limit; fit with a "
                         f"smaller max_features (at most {int(TFLITE_MAX_BYTES * 0.9 / (4 * k + 20))} at "
                         f"n_components={k}) or export formats=('saved_model',)")


def tflite_encoder(index):
    """The numeric encoder without XLA (TFLite converts plain graphs): a concrete function and its owner."""
    from kerasllm._tf import tf

    check_tflite_fits(index)

    class Encoder(tf.Module):
        def __init__(self):
            super().__init__(name="similarity_encoder")
            self.components = tf.constant(index.components_)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="ids"),
                                      tf.TensorSpec([None, None], tf.float32, name="weights")])
        def encode(self, ids, weights):
            rows = tf.gather(self.components, ids)
            summed = tf.reduce_sum(tf.expand_dims(weights, -1) * rows, axis=1)
            return {"embedding": tf.math.l2_normalize(summed, axis=1)}

    encoder = Encoder()
    return encoder.encode.get_concrete_function(), encoder


def write_artifacts(index, directory, formats, top_k=DEFAULT_TOP_K, quantization=None):
    """Write the index, the SavedModel and/or TFLite into ``directory``; returns the manifest extras."""
    from pathlib import Path

    index._require_fit()
    if "tflite" in formats:
        check_tflite_fits(index)  # before writing anything
    directory = Path(directory)
    (directory / INDEX_DIR).mkdir(parents=True)
    index._write(directory / INDEX_DIR)
    extra = {"index": INDEX_DIR, "n_docs": len(index), "dimensions": index.dimensions,
             "n_features": index.features_.n_features,
             "top_k": int(top_k)}  # the default k of a query that names none
    if "saved_model" in formats:
        from kerasllm._tf import tf

        module = build_module(index)
        tf.saved_model.save(module, str(directory), signatures={
            "serving_default": module.embed, "top_k": module.search, "encode_ids": module.encode_ids})
        extra["signatures"] = ["serving_default", "top_k", "encode_ids"]
    if "tflite" in formats:
        from kerasllm.export import tflite

        function, owner = tflite_encoder(index)
        flatbuffer = tflite.convert([function], owner, quantization=quantization)
        idf = io.BytesIO()
        np.save(idf, index.features_.idf, allow_pickle=False)
        config = {"kind": index.kind, "features": index.features_.get_config(), "dimensions": index.dimensions,
                  "inputs": ["ids", "weights"], "outputs": ["embedding"]}
        files = {"vocabulary.json": json.dumps(index.features_.vocabulary, ensure_ascii=False).encode("utf-8"),
                 "idf.npy": idf.getvalue()}
        (directory / TFLITE_FILE).write_bytes(tflite.attach(flatbuffer, config, files))
        extra["tflite_quantization"] = quantization
    return extra
