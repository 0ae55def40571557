"""Runtime for similarity indexes: the saved index format, and ``kerasllm.load(path)`` on an export.

``read_index`` reads a saved index (the folder ``SimilarityIndex.save`` writes, or the ``index/``
inside a ``tasks.export`` version) without any training code: TF-IDF features, SVD arrays, texts,
and a ``kerasllm.runtime.search.Searcher`` over the document vectors. ``SimilarityIndex.load`` and
the predictor below both use it. The predictor's encoder runs from the export (TFLite by default,
or the XLA SavedModel); the search runs in NumPy (memory-mapped vectors) or FAISS.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerasllm.export import TFLITE_FILE
from kerasllm.runtime.search import Searcher, load_array, load_list
from kerasllm.text.tfidf import TfidfFeatures, bucket_width
from kerasllm.text.word import check_texts

KIND = "similarity_index"
CONFIG_FILE = "similarity_index.json"
FORMAT = "kerasllm.similarity_index"
FORMAT_VERSION = 2  # 2: the searcher's files (int8 blocks, ANN index) are saved; 1 is still read
_BATCH = 256


def check_k(k):
    """k (neighbours per text) must be a positive int: one rule for the index and the runtime."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    return int(k)


def index_dir(path):
    """The folder holding ``CONFIG_FILE``: ``path`` itself or the index inside an export folder."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no similarity index at {path}")
    if not path.is_dir():
        raise ValueError(f"{path} is not a similarity index: expected a directory holding {CONFIG_FILE}")
    if (path / CONFIG_FILE).is_file():
        return path
    # A tasks.export folder (model folder or one version): the index is saved inside it.
    from kerasllm.export.layout import MANIFEST, read_manifest, resolve_version

    if (path / MANIFEST).is_file() or any(p.name.isdigit() for p in path.iterdir()):
        version_dir = resolve_version(path)
        manifest = read_manifest(version_dir)
        if manifest["kind"] != KIND:
            raise ValueError(f"{version_dir} holds a {manifest['kind']!r} export, not a similarity index")
        return index_dir(version_dir / manifest.get("index", "index"))
    raise ValueError(f"{path} is not a kerasllm similarity index: {CONFIG_FILE} is missing")


def read_index(path, mmap=False):
    """A saved index as a dict: ``meta`` (the JSON), ``features``, ``components``, ``singular_values``,
    ``searcher`` and ``texts`` (None when not kept). ``mmap=True`` maps the large arrays."""
    path = index_dir(path)
    try:
        with open(path / CONFIG_FILE, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path / CONFIG_FILE} is damaged: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a kerasllm similarity index ({CONFIG_FILE} has format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: similarity index format version {meta.get('format_version')!r} is not "
                         f"supported (this kerasllm reads versions 1 and {FORMAT_VERSION})")
    try:
        n, f, d = meta["n_docs"], meta["n_features"], meta["dimensions"]
        specs = meta["arrays"]
        expected = {"idf": [f], "components": [f, d], "singular_values": [d]}
        arrays = {}
        for name, shape in expected.items():
            if list(specs[name]["shape"]) != shape:
                raise ValueError(f"{path} is damaged: {name} has shape {specs[name]['shape']}, expected {shape}")
            arrays[name] = load_array(path, name, specs[name], mmap and name == "components")
        vocabulary = load_list(path, "vocabulary")
        if len(vocabulary) != f:
            raise ValueError(f"{path} is damaged: vocabulary.json has {len(vocabulary)} entries, expected {f}")
        features = TfidfFeatures.from_config(meta["features"], vocabulary=vocabulary, idf=arrays["idf"])
        search = meta.get("search") or {  # format 1: vectors and ids only; the int8 pass is rebuilt
            "n": n, "dimensions": d, "dtype": specs["vectors"]["dtype"], "int8": None, "ann": None,
            "int8_mode": "auto" if meta["config"].get("int8_search", True) else False,
            "index_mode": "exact", "seed": meta["config"].get("seed", 0)}
        if (search["n"], search["dimensions"]) != (n, d):
            raise ValueError(f"{path} is damaged: the search part holds {search['n']} x {search['dimensions']}, "
                             f"expected {n} x {d}")
        searcher = Searcher.read(path, search, mmap)
        texts = load_list(path, "texts") if "texts" in meta["lists"] else None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is damaged: {CONFIG_FILE} lacks or mangles {e}") from None
    if texts is not None and len(texts) != n:
        raise ValueError(f"{path} is damaged: texts.json has {len(texts)} texts, expected {n}")
    return {"meta": meta, "features": features, "components": arrays["components"],
            "singular_values": arrays["singular_values"], "searcher": searcher, "texts": texts}


def load(version_dir, manifest, prefer="tflite"):
    return SimilarityPredictor(version_dir, manifest, prefer)


class SimilarityPredictor:
    """``embed``, ``query`` and ``similarity`` over an exported similarity index (no training code)."""

    def __init__(self, version_dir, manifest, prefer="tflite"):
        version_dir = Path(version_dir)
        stored = read_index(version_dir / manifest.get("index", "index"), mmap=True)
        self.features, self.searcher = stored["features"], stored["searcher"]
        self.dimensions = self.searcher.dimensions
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
        return self.searcher.n

    @property
    def ids(self):
        return self.searcher.ids

    def embed(self, texts):
        """float32 [len(texts), k] unit vectors, computed by the exported encoder."""
        texts = check_texts(texts)
        # Batches bound the encoder's [batch, width, k] gather.
        parts = [self._embed_batch(texts[i:i + _BATCH]) for i in range(0, len(texts), _BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0, self.dimensions), np.float32)

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
        """For each text, ``min(k, len(index))`` (id, cosine) pairs, best first (equal scores in document order)."""
        return self.searcher.query(self.embed(texts), check_k(k))

    def similarity(self, texts_a, texts_b):
        return self.embed(check_texts(texts_a, "texts_a")) @ self.embed(check_texts(texts_b, "texts_b")).T


def _find(details, name):
    for key, index in details.items():
        if name in key:
            return index
    raise ValueError(f"the TFLite encoder has no input named like {name!r}: {sorted(details)}")
