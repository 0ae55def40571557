"""LSA similarity index: TF-IDF, a randomized truncated SVD, and unit document vectors.

    index = SimilarityIndex(n_components=256).fit(docs)
    index.query(["some text"], k=10)    # [[(id, cosine), ...]], best first, ties in document order

A scikit-learn-style estimator: settings in ``__init__`` (checked by ``fit``), learned state in
attributes ending in ``_``, ``get_params``/``set_params``. Numerics are scipy.sparse products and
scikit-learn's ``randomized_svd``; the search is ``kerasllm.runtime.search.Searcher`` (exact scan,
int8 first pass, or a FAISS index), shared with the runtime of exports. Nothing here imports
TensorFlow (only ``export_artifacts`` does).

Saved as a directory (``kerasllm.runtime.similarity`` reads it): ``similarity_index.json``
(settings, shapes, file list), ``vocabulary.json``, ``ids.json``, ``texts.json``, ``idf.npy``,
``components.npy``, ``vectors.npy``, and the int8 blocks / FAISS index when built, written to a
temporary directory and renamed into place.
"""
from __future__ import annotations

import json
import warnings

import numpy as np
from sklearn.base import BaseEstimator

from kerasllm.runtime.search import INDEX_KINDS, Searcher, check_ids
from kerasllm.runtime.similarity import CONFIG_FILE, FORMAT, FORMAT_VERSION, KIND, check_k, read_index
from kerasllm.text.tfidf import TfidfFeatures
from kerasllm.text.word import check_texts

DTYPES = ("float32", "float16")
_EMBED_CHUNK = 65536  # rows projected at once
DEFAULT_MAX_FEATURES = 1 << 18  # bounds components at 2^18 x k floats (256 MiB at k=256) for any vocabulary


class RefitAdvised(UserWarning):
    """Documents added since the last fit hold many features the vocabulary lacks: ``refit()``."""


def _int(name, value, low):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return int(value)


def _normalize_rows(x):
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))  # no [n, k] temporary (a million rows is 1 GB)
    norms[norms == 0] = 1.0  # an empty text stays the zero vector (cosine 0 with everything)
    x /= norms[:, None]
    return x


class SimilarityIndex(BaseEstimator):
    """Find the documents most similar to a text (TF-IDF + truncated SVD, cosine scores).

    ``query``/``embed`` may run from several threads at once; ``fit``, ``add`` and ``set_params``
    must not run while anything else uses the index.

    Args:
        n_components: SVD dimensions k; ``fit`` refuses more than the corpus has (documents, features).
        seed: random seed of the randomized SVD, the fitting sample and the ANN index.
        ngram_range, char_ngram_range, min_df, max_df, max_features, sublinear_tf, keep_single_chars:
            TF-IDF settings,
            see ``kerasllm.text.tfidf.TfidfFeatures``. ``max_features`` defaults to 2^18 (the most
            frequent features), so ``components`` stays bounded however large the vocabulary.
        n_iter: power iterations of the randomized SVD (more: closer to the exact SVD, slower).
        max_fit_docs: the SVD basis is fitted on at most this many documents (a seeded random
            sample); the rest are folded in. Bounds fitting memory for million-document corpora.
        dtype: "float32" or "float16" for the stored document vectors (half the memory; scores
            are still computed in float32 and rescored in float64).
        keep_texts: keep the documents' texts (saved with the index) so ``refit()`` needs no arguments.
        int8_search: "auto" (an int8 first pass from 20,000 documents, used for up to 4 queries at
            a time, where it measured faster), True or False. Answers are exact either way.
        index: "exact", "ivf" or "hnsw" (FAISS candidates, rescored exactly), or "auto" (ivf from
            200,000 documents).
        refit_threshold: ``add`` warns (``RefitAdvised``) once this share of the feature
            occurrences in documents added since ``fit`` were not in the vocabulary.
    """

    kind = KIND

    def __init__(self, n_components=256, seed=0, ngram_range=(1, 1), char_ngram_range=None, min_df=1, max_df=1.0,
                 max_features=DEFAULT_MAX_FEATURES, sublinear_tf=True, keep_single_chars=False, n_iter=2,
                 max_fit_docs=200_000, dtype="float32", keep_texts=True, int8_search="auto", index="auto",
                 refit_threshold=0.25):
        self.n_components = n_components
        self.seed = seed
        self.ngram_range = ngram_range
        self.char_ngram_range = char_ngram_range
        self.min_df = min_df
        self.max_df = max_df
        self.max_features = max_features
        self.sublinear_tf = sublinear_tf
        self.keep_single_chars = keep_single_chars
        self.n_iter = n_iter
        self.max_fit_docs = max_fit_docs
        self.dtype = dtype
        self.keep_texts = keep_texts
        self.int8_search = int8_search
        self.index = index
        self.refit_threshold = refit_threshold

    # -- settings -------------------------------------------------------------------------------
    def _feature_options(self):
        return dict(ngram_range=self.ngram_range, char_ngram_range=self.char_ngram_range, min_df=self.min_df,
                    max_df=self.max_df, max_features=self.max_features, sublinear_tf=self.sublinear_tf,
                    keep_single_chars=self.keep_single_chars)

    def _validate(self):
        _int("n_components", self.n_components, 1)
        _int("seed", self.seed, -(1 << 62))
        _int("n_iter", self.n_iter, 0)
        _int("max_fit_docs", self.max_fit_docs, 1)
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.int8_search not in ("auto", True, False):
            raise ValueError(f"int8_search must be 'auto', True or False, got {self.int8_search!r}")
        if self.index not in ("auto", *INDEX_KINDS):
            raise ValueError(f"index must be one of {('auto', *INDEX_KINDS)}, got {self.index!r}")
        if isinstance(self.refit_threshold, bool) or not isinstance(self.refit_threshold, (int, float)) or \
                not 0 < self.refit_threshold <= 1:
            raise ValueError(f"refit_threshold must be a share in (0, 1], got {self.refit_threshold!r}")
        return TfidfFeatures(**self._feature_options())  # checks the TF-IDF settings

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, docs, ids=None):
        """Build the index from ``docs`` (list of str); ``ids`` default to 0..n-1. Returns self."""
        features = self._validate()
        docs = check_texts(docs, "docs")
        if not docs:
            raise ValueError("docs is empty: an index needs at least one document")
        ids = list(range(len(docs))) if ids is None else check_ids(ids, len(docs))
        _check_unique(ids, {})
        x = features.fit_transform(docs)
        fit_rows = x
        if x.shape[0] > self.max_fit_docs:
            rng = np.random.default_rng(self.seed)
            fit_rows = x[np.sort(rng.choice(x.shape[0], self.max_fit_docs, replace=False))]
        most = min(fit_rows.shape)
        if self.n_components > most:
            raise ValueError(f"n_components={self.n_components} is more than this corpus allows: "
                             f"{fit_rows.shape[0]} documents and {fit_rows.shape[1]} features give at most {most} "
                             f"dimensions; pass n_components <= {most}")
        components, s = _randomized_basis(fit_rows, self.n_components, self.n_iter, self.seed)
        self.features_ = features
        self.components_ = components
        self.singular_values_ = s
        self.searcher_ = Searcher(self._project_rows(x), ids, self.int8_search, self.index, self.seed)
        self.texts_ = list(docs) if self.keep_texts else None
        self.added_ = {"docs": 0, "features": 0, "unplaced": 0}
        self.last_add_ = None
        self._positions = None
        return self

    def refit(self, docs=None, ids=None):
        """Rebuild vocabulary, idf and SVD basis from scratch; ``docs`` default to the kept texts and ids."""
        if docs is None:
            self._require_fit()
            if self.texts_ is None:
                raise ValueError("refit() needs docs: this index keeps no texts (keep_texts=False)")
            docs, ids = self.texts_, self.ids_ if ids is None else ids
        return self.fit(list(docs), None if ids is None else list(ids))

    def add(self, docs, ids=None):
        """Fold new documents into the existing space (same vocabulary and basis; no refit). Returns self.

        Costs O(new documents) amortised. ``last_add_`` reports the feature occurrences (word tokens,
        n-grams) that were not in the vocabulary and so could not be placed; past ``refit_threshold``
        of all those added since ``fit``, a ``RefitAdvised`` warning says to ``refit()``.
        """
        self._require_fit()
        docs = check_texts(docs, "docs")
        start = len(self)
        ids = list(range(start, start + len(docs))) if ids is None else check_ids(ids, len(docs))
        _check_unique(ids, self._id_positions())
        if not docs:
            return self
        x, n_features, unplaced = self.features_.transform(docs, return_unknown=True)
        self.searcher_.append(self._project_rows(x), ids)
        if self._positions is not None:
            self._positions.update((value, start + i) for i, value in enumerate(ids))
        if self.texts_ is not None:
            self.texts_.extend(docs)
        added = self.added_
        added["docs"] += len(docs)
        added["features"] += n_features
        added["unplaced"] += unplaced
        share = added["unplaced"] / max(added["features"], 1)
        self.last_add_ = {"docs": len(docs), "features": n_features, "unplaced": unplaced,
                          "unplaced_share_since_fit": share, "refit_advised": share > self.refit_threshold}
        if self.last_add_["refit_advised"] and not added.get("warned"):
            added["warned"] = True  # once per fit
            warnings.warn(f"{added['unplaced']} of the {added['features']} feature occurrences ({share:.1%}) in the "
                          f"{added['docs']} documents added since fit are not in the vocabulary and were left "
                          f"out of their vectors: call refit() to learn them", RefitAdvised, stacklevel=2)
        return self

    def shard(self, start, stop):
        """A new index over documents [start, stop) in the same space (vocabulary, idf, basis shared).

        For a corpus past one machine: cut the index by document range, save or export each shard
        (each its own server or version), query every shard and ``kerasllm.runtime.search.merge_top_k``
        the answers, in shard order. Each shard builds its own int8 pass / ANN index for its size.
        """
        self._require_fit()
        start, stop, _ = slice(start, stop).indices(len(self))
        part = type(self)(**self.get_params())
        part.features_, part.components_, part.singular_values_ = self.features_, self.components_, \
            self.singular_values_
        part.searcher_ = Searcher(np.array(self.vectors_[start:stop]), self.ids_[start:stop], self.int8_search,
                                  self.index, self.seed)
        part.texts_ = None if self.texts_ is None else self.texts_[start:stop]
        part.added_, part.last_add_, part._positions = {"docs": 0, "features": 0, "unplaced": 0}, None, None
        return part

    def _id_positions(self):
        if self._positions is None:
            self._positions = {value: row for row, value in enumerate(self.ids_)}
        return self._positions

    def ids_position(self, doc_id):
        """The row of document ``doc_id`` (in ``ids_``, ``vectors_`` and ``texts_``)."""
        try:
            return self._id_positions()[doc_id]
        except KeyError:
            raise KeyError(f"no document with id {doc_id!r} in the index") from None

    def _project_rows(self, x):
        """Document vectors in the stored dtype, a chunk at a time (no second full-size float32 copy)."""
        out = np.empty((x.shape[0], self.components_.shape[1]), self.dtype)
        for start in range(0, x.shape[0], _EMBED_CHUNK):
            out[start:start + _EMBED_CHUNK] = self._project(x[start:start + _EMBED_CHUNK])
        return out

    def _project(self, x):
        """TF-IDF rows -> unit vectors in the SVD space (float32)."""
        return _normalize_rows(np.asarray(x @ self.components_, dtype=np.float32))

    def _require_fit(self):
        if getattr(self, "components_", None) is None:
            raise RuntimeError("the similarity index is not built yet: call fit(docs) first")

    # -- learned state --------------------------------------------------------------------------
    @property
    def vectors_(self):
        """[n_docs, k] unit rows (float32 or float16; maybe memory-mapped)."""
        self._require_fit()
        return self.searcher_.vectors

    @property
    def ids_(self):
        self._require_fit()
        return self.searcher_.ids

    def __len__(self):
        return self.searcher_.n if getattr(self, "searcher_", None) is not None else 0

    @property
    def dimensions(self):
        self._require_fit()
        return self.components_.shape[1]

    # -- using ----------------------------------------------------------------------------------
    def embed(self, texts):
        """float32 [len(texts), k]: unit vectors (a text with no known feature gives the zero vector)."""
        self._require_fit()
        texts = check_texts(texts)
        return self._project(self.features_.transform(texts))

    def similarity(self, texts_a, texts_b):
        """float32 [len(a), len(b)]: cosine similarity of every pair."""
        return self.embed(check_texts(texts_a, "texts_a")) @ self.embed(check_texts(texts_b, "texts_b")).T

    def query(self, texts, k=10):
        """For each text, ``min(k, len(index))`` (id, cosine) pairs, best first; equal scores (duplicate
        documents) in document order. A text with no known feature scores 0 against every document."""
        self._require_fit()
        k = check_k(k)
        return self.searcher_.query(self.embed(texts), k)

    # -- persistence ----------------------------------------------------------------------------
    def save(self, path):
        """Write the index to directory ``path`` (replacing an index there; never another kind of folder)."""
        self._require_fit()
        from kerasllm.export.layout import replace_dir

        return replace_dir(path, self._write, CONFIG_FILE, "similarity index")

    def _write(self, directory):
        arrays = {"idf": self.features_.idf, "components": self.components_,
                  "singular_values": self.singular_values_}
        for name, array in arrays.items():
            np.save(directory / f"{name}.npy", array, allow_pickle=False)
        search = self.searcher_.write(directory)
        lists = {"vocabulary": self.features_.vocabulary}
        if self.texts_ is not None:
            lists["texts"] = self.texts_
        for name, values in lists.items():
            with open(directory / f"{name}.json", "w", encoding="utf-8") as f:
                json.dump(values, f, ensure_ascii=False)
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.get_params().items()}
        config = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": params,
                  "features": self.features_.get_config(), "n_docs": len(self), "added": self.added_,
                  "n_features": self.features_.n_features, "dimensions": self.dimensions,
                  "arrays": {name: {"shape": list(a.shape), "dtype": str(a.dtype)} for name, a in arrays.items()},
                  "search": search, "lists": sorted(lists) + ["ids"]}
        config["arrays"]["vectors"] = {"shape": [len(self), self.dimensions], "dtype": search["dtype"]}
        with open(directory / CONFIG_FILE, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=1, ensure_ascii=False)

    @classmethod
    def load(cls, path, mmap=False):
        """Load a saved index (or the index inside a ``tasks.export`` version folder).

        Nothing is rebuilt: the int8 blocks and the ANN index are read as saved. ``mmap=True`` maps
        the document vectors and int8 blocks from disk instead of reading them (large indexes).
        """
        stored = read_index(path, mmap)
        meta = stored["meta"]
        params = dict(meta["config"])
        if params.get("int8_search") is True and meta["format_version"] == 1:
            params["int8_search"] = "auto"  # format 1 stored a bool meaning "from 20,000 documents"
        params = {k: v for k, v in params.items() if k in cls._get_param_names()}
        params.setdefault("keep_single_chars", stored["features"].keep_single_chars)
        index = cls(**params)
        index.features_ = stored["features"]
        index.components_ = stored["components"]
        index.singular_values_ = stored["singular_values"]
        index.searcher_ = stored["searcher"]
        index.texts_ = stored["texts"]
        index.added_ = meta.get("added", {"docs": 0, "features": 0, "unplaced": 0})
        index.last_add_ = None
        index._positions = None
        return index

    # -- export ---------------------------------------------------------------------------------
    def export_artifacts(self, directory, formats, **options):
        """SavedModel/TFLite encoders and the index itself (for the runtime's search); see kerasllm.export."""
        from kerasllm.export.similarity import write_artifacts

        return write_artifacts(self, directory, formats, **options)


def _randomized_basis(x, k, n_iter, seed, oversamples=10):
    """Top-k right singular vectors [features, k] float32 and singular values of sparse ``x``.

    scikit-learn's randomized SVD (its range finder: the random sketch and power iterations of
    ``randomized_svd``/``TruncatedSVD``, on the same side), but the small projected matrix B is not
    decomposed by a full SVD: only the singular vectors on its short side are needed, and they are
    the eigenvectors of the (k+10)^2 Gram matrix B B^T (float64). Same subspace, less work.
    """
    from scipy.linalg import eigh
    from sklearn.utils.extmath import randomized_range_finder

    transpose = x.shape[0] < x.shape[1]  # sketch the longer side, as randomized_svd does
    m = x.T.tocsr() if transpose else x
    q = randomized_range_finder(m, size=k + oversamples, n_iter=n_iter, power_iteration_normalizer="auto",
                                random_state=seed)  # [long side, k + p], orthonormal
    b = np.asarray((m.T @ q).T, dtype=np.float32)  # [k + p, short side]
    values, vectors = eigh((b @ b.T).astype(np.float64))
    order = np.argsort(values)[::-1][:k]
    s = np.sqrt(np.maximum(values[order], 0.0))
    u = vectors[:, order].astype(np.float32)
    if transpose:  # x^T = q b = (q u) s v^T: the features' singular vectors are q u
        basis = q.astype(np.float32) @ u
    else:  # x = q b, b = u s v^T: the features' singular vectors are b^T u / s
        basis = (b.T @ u) / np.where(s > 0, s, 1.0).astype(np.float32)
    return np.ascontiguousarray(basis, dtype=np.float32), s.astype(np.float32)


def _check_unique(ids, used):
    seen = set()
    for i, value in enumerate(ids):
        if value in used or value in seen:
            raise ValueError(f"ids[{i}] = {value!r} is already used: ids must be unique")
        seen.add(value)


def load_similarity_index(path, mmap=False):
    """Load an index saved by ``SimilarityIndex.save`` (or exported by ``tasks.export``)."""
    return SimilarityIndex.load(path, mmap=mmap)
