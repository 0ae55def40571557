"""LSA similarity index: TF-IDF, a randomized truncated SVD, and unit document vectors.

    index = SimilarityIndex(n_components=256).fit(docs)
    index.query(["some text"], k=10)    # [[(id, cosine), ...]], best first

Numerics are scipy.sparse products and scikit-learn's ``randomized_svd``; the search is
``kerasllm.runtime.search.top_k``. Nothing here imports TensorFlow (only ``export_artifacts`` does).

Saved as a directory: ``similarity_index.json`` (settings, shapes, file list) and plain files
(``vocabulary.json``, ``ids.json``, ``texts.json``, ``idf.npy``, ``components.npy``, ``vectors.npy``),
written to a temporary directory and renamed into place.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerasllm.runtime.search import top_k
from kerasllm.text.tfidf import TfidfFeatures
from kerasllm.text.word import check_texts

CONFIG_FILE = "similarity_index.json"
FORMAT = "kerasllm.similarity_index"
FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
_FEATURE_OPTIONS = ("ngram_range", "char_ngram_range", "min_df", "max_df", "max_features", "sublinear_tf")
_EMBED_CHUNK = 65536  # rows projected at once
INT8_MIN_DOCS = 20_000  # below this a float32 scan is as fast as the int8 first pass


def _check_ids(ids, n, name="ids"):
    """Ids are str or int (JSON round-trips them); returns a list."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a list of ids (str or int), got a single {type(ids).__name__}")
    try:
        ids = list(ids)
    except TypeError:
        raise TypeError(f"{name} must be a list of ids (str or int), got {type(ids).__name__}") from None
    if len(ids) != n:
        raise ValueError(f"{name} has {len(ids)} ids for {n} documents; give one id per document")
    out = []
    for i, value in enumerate(ids):
        if isinstance(value, np.integer):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise TypeError(f"{name}[{i}] must be a str or int, got {type(value).__name__}: {value!r:.60}")
        out.append(value)
    return out


def _normalize_rows(x):
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no [n, k] temporary (a million rows is 1 GB)
    norms[norms == 0] = 1.0  # an empty text stays the zero vector (cosine 0 with everything)
    x /= norms[:, None]
    return x


class SimilarityIndex:
    """Find the documents most similar to a text (TF-IDF + truncated SVD, cosine scores).

    Args:
        n_components: SVD dimensions k (capped at what the data allows: documents and features).
        seed: random seed of the randomized SVD (and of the fitting sample, see ``max_fit_docs``).
        ngram_range, char_ngram_range, min_df, max_df, max_features, sublinear_tf: TF-IDF settings,
            see ``kerasllm.text.tfidf.TfidfFeatures``.
        n_iter: power iterations of the randomized SVD (more: closer to the exact SVD, slower).
        max_fit_docs: the SVD basis is fitted on at most this many documents (a seeded random
            sample); the rest are folded in. Bounds fitting memory for million-document corpora.
        dtype: "float32" or "float16" for the stored document vectors (half the memory; scores
            are still computed in float32).
        keep_texts: keep the documents' texts (saved with the index) so ``refit()`` needs no arguments.
        int8_search: for indexes of INT8_MIN_DOCS documents or more, keep an int8 copy of the vectors
            that LiteRT scores fast; candidates are rescored in float32, so answers stay exact.
    """

    kind = "similarity_index"

    def __init__(self, n_components=256, seed=0, ngram_range=(1, 1), char_ngram_range=None, min_df=1, max_df=1.0,
                 max_features=None, sublinear_tf=True, n_iter=2, max_fit_docs=200_000, dtype="float32",
                 keep_texts=True, int8_search=True):
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"n_components must be a positive int, got {n_components!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise ValueError(f"seed must be an int, got {seed!r}")
        if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
            raise ValueError(f"n_iter must be a non-negative int, got {n_iter!r}")
        if isinstance(max_fit_docs, bool) or not isinstance(max_fit_docs, (int, np.integer)) or max_fit_docs < 1:
            raise ValueError(f"max_fit_docs must be a positive int, got {max_fit_docs!r}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        self.n_components = int(n_components)
        self.seed = int(seed)
        self.n_iter = int(n_iter)
        self.max_fit_docs = int(max_fit_docs)
        self.dtype = dtype
        self.keep_texts = bool(keep_texts)
        self.int8_search = bool(int8_search)
        self._int8 = None
        self.feature_options = dict(ngram_range=ngram_range, char_ngram_range=char_ngram_range, min_df=min_df,
                                    max_df=max_df, max_features=max_features, sublinear_tf=sublinear_tf)
        TfidfFeatures(**self.feature_options)  # validate the settings now, not at fit time
        self.features = None
        self.components = None  # [n_features, k] float32: the SVD basis, one row per feature
        self.singular_values = None
        self.vectors = None  # [n_docs, k] unit rows (float32 or float16; maybe memory-mapped)
        self.ids = []
        self.texts = None
        self._positions = None  # id -> row, built when first needed

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, docs, ids=None):
        """Build the index from ``docs`` (list of str); ``ids`` default to 0..n-1. Returns self."""
        from sklearn.utils.extmath import randomized_svd

        docs = check_texts(docs, "docs")
        if not docs:
            raise ValueError("docs is empty: an index needs at least one document")
        ids = list(range(len(docs))) if ids is None else _check_ids(ids, len(docs))
        self._check_unique(ids, existing=False)
        features = TfidfFeatures(**self.feature_options)
        x = features.fit_transform(docs)
        fit_rows = x
        if x.shape[0] > self.max_fit_docs:
            rng = np.random.default_rng(self.seed)
            fit_rows = x[np.sort(rng.choice(x.shape[0], self.max_fit_docs, replace=False))]
        k = min(self.n_components, *fit_rows.shape)
        _, s, vt = randomized_svd(fit_rows, k, n_iter=self.n_iter, random_state=self.seed)
        self.features = features
        self.components = np.ascontiguousarray(vt.T, dtype=np.float32)
        self.singular_values = s.astype(np.float32)
        self.vectors = self._project_rows(x)
        self.ids = ids
        self._positions = None
        self.texts = list(docs) if self.keep_texts else None
        self._int8 = None
        self._update_int8()
        return self

    def refit(self, docs=None, ids=None):
        """Rebuild vocabulary, idf and SVD basis from scratch; ``docs`` default to the kept texts and ids."""
        if docs is None:
            if self.texts is None:
                raise ValueError("refit() needs docs: this index keeps no texts (keep_texts=False)")
            docs, ids = self.texts, self.ids if ids is None else ids
        return self.fit(docs, ids)

    def add(self, docs, ids=None):
        """Fold new documents into the existing space (same vocabulary and basis; no refit). Returns self."""
        self._require_fit()
        docs = check_texts(docs, "docs")
        start = len(self.ids)
        ids = list(range(start, start + len(docs))) if ids is None else _check_ids(ids, len(docs))
        self._check_unique(ids, existing=True)
        if not docs:
            return self
        new = self._project_rows(self.features.transform(docs))
        self.vectors = np.concatenate([np.asarray(self.vectors), new])
        if self._positions is not None:
            self._positions.update((value, start + i) for i, value in enumerate(ids))
        self.ids = self.ids + ids
        if self.texts is not None:
            self.texts = self.texts + docs
        self._update_int8()
        return self

    def _update_int8(self):
        if not self.int8_search or len(self.ids) < INT8_MIN_DOCS:
            self._int8 = None
            return
        from kerasllm.runtime.int8_scores import Int8Scores

        self._int8 = Int8Scores(self.vectors) if self._int8 is None else self._int8.extend(self.vectors)

    def _check_unique(self, ids, existing):
        used = self._id_positions() if existing else {}
        seen = set()
        for i, value in enumerate(ids):
            if value in used or value in seen:
                raise ValueError(f"ids[{i}] = {value!r} is already used: ids must be unique")
            seen.add(value)

    def _id_positions(self):
        if self._positions is None:
            self._positions = {value: row for row, value in enumerate(self.ids)}
        return self._positions

    def ids_position(self, doc_id):
        """The row of document ``doc_id`` (in ``ids``, ``vectors`` and ``texts``)."""
        try:
            return self._id_positions()[doc_id]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in the index") from None

    def _project_rows(self, x):
        """Document vectors in the stored dtype, a chunk at a time (no second full-size float32 copy)."""
        out = np.empty((x.shape[0], self.components.shape[1]), self.dtype)
        for start in range(0, x.shape[0], _EMBED_CHUNK):
            out[start:start + _EMBED_CHUNK] = self._project(x[start:start + _EMBED_CHUNK])
        return out

    def _project(self, x):
        """TF-IDF rows -> unit vectors in the SVD space (float32)."""
        return _normalize_rows(np.asarray(x @ self.components, dtype=np.float32))

    def _require_fit(self):
        if self.components is None:
            raise RuntimeError("the similarity index is not built yet: call fit(docs) first")

    # -- using ------------------------------------------------------------------------------
    def __len__(self):
        return len(self.ids)

    @property
    def dimensions(self):
        self._require_fit()
        return self.components.shape[1]

    def embed(self, texts):
        """float32 [len(texts), k]: unit vectors (a text with no known feature gives the zero vector)."""
        self._require_fit()
        texts = check_texts(texts)
        return self._project(self.features.transform(texts))

    def similarity(self, texts_a, texts_b):
        """float32 [len(a), len(b)]: cosine similarity of every pair."""
        return self.embed(check_texts(texts_a, "texts_a")) @ self.embed(check_texts(texts_b, "texts_b")).T

    def query(self, texts, k=10):
        """For each text, ``min(k, len(index))`` (id, cosine) pairs, best first. A text with no known
        feature scores 0 against every document (its pairs then follow the index order)."""
        self._require_fit()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return search(self.vectors, self.ids, self.embed(texts), k, self._int8)

    # -- persistence ------------------------------------------------------------------------
    def get_config(self):
        return {"n_components": self.n_components, "seed": self.seed, "n_iter": self.n_iter,
                "max_fit_docs": self.max_fit_docs, "dtype": self.dtype, "keep_texts": self.keep_texts,
                "int8_search": self.int8_search,
                **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.feature_options.items()}}

    def save(self, path):
        """Write the index to directory ``path`` (replacing an index there; never another kind of folder)."""
        self._require_fit()
        from kerasllm.export.layout import replace_dir

        return replace_dir(path, self._write, CONFIG_FILE, "similarity index")

    def _write(self, directory):
        arrays = {"idf": self.features.idf, "components": self.components,
                  "singular_values": self.singular_values, "vectors": np.asarray(self.vectors)}
        for name, array in arrays.items():
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        lists = {"vocabulary": self.features.vocabulary, "ids": self.ids}
        if self.texts is not None:
            lists["texts"] = self.texts
        for name, values in lists.items():
            with open(directory / f"{name}.json", "w", encoding="utf-8") as f:
                json.dump(values, f, ensure_ascii=False)
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": self.get_config(),
                  "features": self.features.get_config(), "n_docs": len(self.ids),
                  "n_features": self.features.n_features, "dimensions": self.dimensions,
                  "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
                  "lists": sorted(lists)}
        with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, path, mmap=False):
        """Load a saved index (or the index inside a ``tasks.export`` version folder).

        ``mmap=True`` maps the document vectors from disk instead of reading them (large indexes).
        """
        path = _index_dir(Path(path))
        try:
            with open(path / CONFIG_FILE, encoding="utf-8") as f:
                meta = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path / CONFIG_FILE} is damaged: {e}") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a kerasllm similarity index ({CONFIG_FILE} has format "
                             f"{meta.get('format') if isinstance(meta, dict) else None!r}, expected {FORMAT!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: similarity index format version {meta.get('format_version')!r} is not "
                             f"supported (this kerasllm reads version {FORMAT_VERSION})")
        try:
            arrays = {name: _load_array(path, name, spec, mmap and name == "vectors")
                      for name, spec in meta["arrays"].items()}
            lists = {name: _load_list(path, name) for name in meta["lists"]}
            index = cls(**meta["config"])
            index.features = TfidfFeatures.from_config(meta["features"], vocabulary=lists["vocabulary"],
                                                       idf=arrays["idf"])
            index.components = arrays["components"]
            index.singular_values = arrays["singular_values"]
            index.vectors = arrays["vectors"]
            index.ids = _check_ids(lists["ids"], meta["n_docs"])
            index.texts = lists.get("texts")
        except (KeyError, TypeError) as e:
            raise ValueError(f"{path} is damaged: {CONFIG_FILE} lacks or mangles {e}") from None
        n, f, d = meta["n_docs"], meta["n_features"], meta["dimensions"]
        expected = {"idf": (f,), "components": (f, d), "singular_values": (d,), "vectors": (n, d)}
        for name, shape in expected.items():
            if tuple(arrays[name].shape) != shape:
                raise ValueError(f"{path} is damaged: {name}.npy has shape {arrays[name].shape}, expected {shape}")
        if len(index.features.vocabulary) != f or (index.texts is not None and len(index.texts) != n):
            raise ValueError(f"{path} is damaged: vocabulary.json or texts.json has the wrong length")
        index._update_int8()
        return index

    # -- export -----------------------------------------------------------------------------
    def export_artifacts(self, directory, formats, **options):
        """SavedModel/TFLite encoders and the index itself (for the runtime's search); see kerasllm.export."""
        from kerasllm.export.similarity import write_artifacts

        return write_artifacts(self, directory, formats, **options)


def search(vectors, ids, queries, k, int8_scores=None):
    """``top_k`` as lists of (id, score) pairs."""
    idx, scores = top_k(vectors, queries, k, int8_scores)
    return [[(ids[i], s) for i, s in zip(row_idx, row_scores)] for row_idx, row_scores in
            zip(idx.tolist(), scores.tolist())]


def _index_dir(path):
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
        if manifest["kind"] != SimilarityIndex.kind:
            raise ValueError(f"{version_dir} holds a {manifest['kind']!r} export, not a similarity index")
        return _index_dir(version_dir / manifest.get("index", "index"))
    raise ValueError(f"{path} is not a kerasllm similarity index: {CONFIG_FILE} is missing")


def _load_array(path, name, spec, mmap):
    file = path / f"{name}.npy"
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path} is damaged: {file.name} is missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is damaged: cannot read {file.name} ({e})") from None
    if list(array.shape) != list(spec["shape"]) or str(array.dtype) != spec["dtype"]:
        raise ValueError(f"{path} is damaged: {file.name} holds {array.dtype}{list(array.shape)}, "
                         f"expected {spec['dtype']}{spec['shape']}")
    return array


def _load_list(path, name):
    file = path / f"{name}.json"
    try:
        with open(file, encoding="utf-8") as f:
            values = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path} is damaged: {file.name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged: cannot read {file.name} ({e})") from None
    if not isinstance(values, list):
        raise ValueError(f"{path} is damaged: {file.name} does not hold a list")
    return values


def load_similarity_index(path, mmap=False):
    """Load an index saved by ``SimilarityIndex.save`` (or exported by ``tasks.export``)."""
    return SimilarityIndex.load(path, mmap=mmap)
