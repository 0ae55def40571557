"""Top-k search by inner product over unit document vectors: one module for the index and the runtime.

``Searcher`` holds the document vectors (float32 or float16, maybe memory-mapped), their ids and,
optionally, an int8 first pass (``kerasllm.runtime.int8_scores``) and an approximate index (FAISS
``ivf`` or ``hnsw``). Every path ends the same way: its candidates are rescored exactly (float64,
rounded to float32) and ranked by score, then by document order. So equal scores (duplicate
documents) always come back in document order, and the same text asked alone or in a batch gets
the same answer, whatever the block size or pass.

- exact scan: blocked float32 BLAS products (bounded memory); every document within a float32
  rounding margin of the k-th best is a candidate, so rounding never decides a tie.
- int8 pass: approximate scores with a proven error bound; documents whose bound reaches the k-th
  best are candidates (exact answers). Used for few queries at a time, where it is faster.
- ANN (``ivf``/``hnsw``): FAISS proposes candidates (approximate: recall below 1 is possible).

Not thread-safe for ``add`` during searches; searches may run from several threads (the int8
pass serialises itself). Nothing here imports TensorFlow or training code.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

# Scores held at once (query rows x document rows): 4M floats = 16 MB.
_SCORE_BUDGET = 1 << 22
_MAX_DOC_BLOCK = 1 << 17
# Below this much work (multiply-adds), BLAS runs on one thread: small products gain little from a
# second thread, and on a busy machine waiting for one costs a scheduler time slice (~16 ms).
_ONE_THREAD_WORK = 1 << 28
_controller = ThreadpoolController()  # finds NumPy's BLAS once (ms), not in the first query

# The int8 first pass pays off from this many documents, for at most this many queries per call
# (measured by benchmarks/similarity.py, "int8 pass" rows: batches are faster as one float32 BLAS product).
INT8_MIN_DOCS = 20_000
INT8_MAX_QUERIES = 16
INDEX_KINDS = ("exact", "ivf", "hnsw")
ANN_MIN_DOCS = 200_000  # index="auto" builds an ANN index (ivf) from this many documents
ANN_CANDIDATES = 8  # candidates per wanted neighbour, rescored exactly
VECTORS_FILE, IDS_FILE, ANN_FILE = "vectors.npy", "ids.json", "ann.faiss"


def _one_blas_thread():
    return _controller.limit(limits=1, user_api="blas")


def _margin(dimensions):
    """Twice the worst-case float32 rounding error of a dot product of unit vectors."""
    return float(dimensions) * 2.0 ** -23 + 1e-7


# -- exact top-k ----------------------------------------------------------------------------------
def top_k(vectors, queries, k, int8_scores=None):
    """The ``k`` best rows of ``vectors`` for each query, by inner product (exact).

    Args:
        vectors: [n, d] float32 or float16 array (may be a np.memmap).
        queries: [q, d] float32 array.
        k: how many to return; more than ``n`` returns all ``n``.
        int8_scores: optional ``Int8Scores`` of the first rows of ``vectors`` (a first pass).

    Returns (indices int64 [q, min(k, n)], scores float32 [q, min(k, n)]), best first, equal
    scores in index order.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != vectors.shape[1]:
        raise ValueError(f"queries must be [batch, {vectors.shape[1]}], got shape {list(queries.shape)}")
    k = min(int(k), vectors.shape[0])
    if queries.shape[0] * vectors.shape[0] * vectors.shape[1] < _ONE_THREAD_WORK or int8_scores is not None:
        with _one_blas_thread():
            return _top_k(vectors, queries, k, int8_scores, None)
    return _top_k(vectors, queries, k, int8_scores, None)


def _top_k(vectors, queries, k, int8_scores, ann):
    n_queries = queries.shape[0]
    best_idx = np.zeros((n_queries, k), np.int64)
    best_score = np.zeros((n_queries, k), np.float32)
    if k == 0 or n_queries == 0:
        return best_idx, best_score
    zero = ~queries.any(axis=1)
    best_idx[zero] = np.arange(k)  # no feature: every score is 0, so the first k documents in order
    rows = np.flatnonzero(~zero)
    if not len(rows):
        return best_idx, best_score
    q = queries[rows]
    if ann is not None:
        candidates = ann.candidates(q, k)
    elif int8_scores is not None and vectors.shape[0] > 4 * k:
        candidates = _int8_candidates(vectors, q, k, int8_scores)
    else:
        candidates = _scan_candidates(vectors, q, k)
    for row, query, found in zip(rows, q, candidates):
        if found is None or len(found) < k:  # an ANN probe found too few (or int8 bounds too loose)
            found = _scan_candidates(vectors, query[None, :], k)[0]
        best_idx[row], best_score[row] = _exact_best(vectors, query, found, k)
    return best_idx, best_score


def _exact_best(vectors, query, candidates, k):
    """Rescore ``candidates`` (ascending rows) exactly; the k best by score, then row."""
    exact = (np.asarray(vectors[candidates], dtype=np.float64) @ query.astype(np.float64)).astype(np.float32)
    order = np.lexsort((candidates, -exact))[:k]
    return candidates[order], exact[order]


def _scan_candidates(vectors, queries, k, start=0, stop=None):
    """Per query: ascending rows in [start, stop) whose float32 score is within the rounding margin
    of the k-th best float32 score (so it holds the exact top k, whatever the rounding)."""
    stop = vectors.shape[0] if stop is None else stop
    n, n_queries = stop - start, queries.shape[0]
    margin = _margin(vectors.shape[1])
    doc_block = int(min(n, _MAX_DOC_BLOCK, max(_SCORE_BUDGET // n_queries, 4 * k, 1024)))
    query_block = max(1, _SCORE_BUDGET // max(doc_block, 1))
    convert = vectors.dtype != np.float32
    out = []
    for q0 in range(0, n_queries, query_block):
        q = queries[q0:q0 + query_block]
        best = np.full((len(q), k), -np.inf, np.float32)  # the k best scores so far (values only)
        found_rows, found_cols, found_scores = [], [], []
        for d0 in range(start, stop, doc_block):
            block = vectors[d0:min(d0 + doc_block, stop)]
            if convert:
                block = block.astype(np.float32)
            scores = q @ block.T
            kk = min(k, scores.shape[1])
            top = np.partition(scores, scores.shape[1] - kk, axis=1)[:, -kk:]
            best = np.concatenate([best, top], axis=1)
            best = np.partition(best, best.shape[1] - k, axis=1)[:, -k:]
            r, c = np.nonzero(scores >= (best.min(axis=1) - margin)[:, None])
            found_rows.append(r)
            found_cols.append(c + d0)
            found_scores.append(scores[r, c])
        r, c, s = (np.concatenate(a) for a in (found_rows, found_cols, found_scores))
        keep = s >= (best.min(axis=1) - margin)[r]
        r, c = r[keep], c[keep]
        order = np.argsort(r, kind="stable")  # per query: blocks in order, columns ascending
        out += np.split(c[order], np.cumsum(np.bincount(r, minlength=len(q)))[:-1])
    return out


def _int8_candidates(vectors, queries, k, int8_scores):
    """Candidates from the int8 pass (whole blocks) and a float32 scan of the tail rows."""
    n, m = vectors.shape[0], int8_scores.n
    margin = _margin(vectors.shape[1])
    out = []
    for q0 in range(0, len(queries), max(1, _SCORE_BUDGET // n)):
        q = queries[q0:q0 + max(1, _SCORE_BUDGET // n)]
        approx, bound = int8_scores(q)
        lower, upper = approx - bound, approx + bound
        if m < n:
            tail = q @ np.asarray(vectors[m:], dtype=np.float32).T
            lower = np.concatenate([lower, tail - margin], axis=1)
            upper = np.concatenate([upper, tail + margin], axis=1)
        kth = np.partition(lower, n - k, axis=1)[:, n - k]  # the k-th best exact score is at least this
        for row in range(len(q)):
            candidates = np.flatnonzero(upper[row] >= kth[row])
            out.append(None if len(candidates) > n // 8 else candidates)  # None: bounds too loose, scan
    return out


# -- approximate index (FAISS) -----------------------------------------------------------------------
class AnnIndex:
    """FAISS index of 8-bit scalar-quantized vectors (a quarter of float32) proposing candidates.

    ``ivf``: inverted lists over ``4 sqrt(n)`` (at most 4096) k-means cells, ``nprobe`` of them searched.
    ``hnsw``: a graph (M=32), ``ef_search`` wide. Both use inner product (the vectors are unit).
    """

    def __init__(self, kind, index, nprobe=None, ef_search=None):
        self.kind, self.index = kind, index
        self.nprobe, self.ef_search = nprobe, ef_search
        self._apply()

    def _apply(self):
        import faiss

        if self.kind == "ivf":
            faiss.extract_index_ivf(self.index).nprobe = self.nprobe
        else:
            self.index.hnsw.efSearch = self.ef_search

    @classmethod
    def build(cls, kind, vectors, seed=0, nprobe=None, ef_search=128, train_size=100_000):
        import faiss

        if kind not in ("ivf", "hnsw"):
            raise ValueError(f"an approximate index is 'ivf' or 'hnsw', got {kind!r}")
        n, d = vectors.shape
        if kind == "ivf":
            nlist = int(max(1, min(4 * np.sqrt(n), n // 39, 4096)))  # FAISS wants >= 39 training points per cell
            index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                  faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(seed)
            sample = np.sort(rng.choice(n, min(n, max(train_size, 39 * nlist)), replace=False))
            index.cp.seed, index.cp.niter = int(seed), 10
            index.cp.spherical = True  # unit vectors: centroids on the sphere, so inner product picks the nearest
            index.train(np.asarray(vectors[sample], dtype=np.float32))
            nprobe = nprobe or min(nlist, 64)  # recall@10 0.973, p50 0.81 ms at 1M documents (benchmarks)
        else:
            index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_8bit, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.train(np.asarray(vectors[:min(n, train_size)], dtype=np.float32))
        ann = cls(kind, index, nprobe, ef_search)
        ann.add(vectors)
        return ann

    @property
    def n(self):
        return self.index.ntotal

    def add(self, vectors, chunk=1 << 16):
        """Append rows (the index's ids are positions, so rows must follow the ones already held)."""
        for start in range(0, vectors.shape[0], chunk):
            self.index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))

    def candidates(self, queries, k):
        n_candidates = min(self.n, max(ANN_CANDIDATES * k, 64))
        _, labels = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), n_candidates)
        return [np.sort(row[row >= 0]) for row in labels]

    def write(self, directory):
        import faiss

        faiss.write_index(self.index, str(Path(directory) / ANN_FILE))
        return {"kind": self.kind, "n": self.n, "nprobe": self.nprobe, "ef_search": self.ef_search}

    @classmethod
    def read(cls, directory, spec, mmap=False):
        import faiss

        file = Path(directory) / ANN_FILE
        if not file.is_file():
            raise ValueError(f"{directory} is damaged: {ANN_FILE} is missing")
        try:
            index = faiss.read_index(str(file))  # read whole (not mapped): it must stay growable by add
        except RuntimeError as e:
            raise ValueError(f"{directory} is damaged: cannot read {ANN_FILE} ({str(e).splitlines()[0]})") from None
        if index.ntotal != spec["n"]:
            raise ValueError(f"{directory} is damaged: {ANN_FILE} holds {index.ntotal} vectors, expected {spec['n']}")
        return cls(spec["kind"], index, spec.get("nprobe"), spec.get("ef_search"))


# -- the searcher -------------------------------------------------------------------------------------
class Searcher:
    """Document vectors, their ids, and the passes that search them (see the module docstring).

    Args:
        vectors: [n, d] float32/float16 unit rows (a np.memmap is fine: it is copied on the first ``add``).
        ids: n document ids (str or int).
        int8: "auto" (an int8 pass from INT8_MIN_DOCS documents), True or False.
        index: "exact", "ivf", "hnsw" or "auto" (ivf from ANN_MIN_DOCS documents).
    """

    def __init__(self, vectors, ids, int8="auto", index="exact", seed=0, _int8_scores=None, _ann=None):
        self._buffer, self.n = vectors, vectors.shape[0]
        self.ids = list(ids)
        self.int8_mode, self.index_mode, self.seed = int8, index, seed
        self.int8_scores, self.ann = _int8_scores, _ann
        self._update_passes()

    @property
    def vectors(self):
        return self._buffer[:self.n]

    @property
    def dimensions(self):
        return self._buffer.shape[1]

    @property
    def kind(self):
        """Which index answers queries: "exact" or the ANN kind."""
        return "exact" if self.ann is None else self.ann.kind

    def _update_passes(self):
        wants_int8 = self.int8_mode is True or (self.int8_mode == "auto" and self.n >= INT8_MIN_DOCS)
        if not wants_int8:
            self.int8_scores = None
        elif self.int8_scores is None:
            from kerasllm.runtime.int8_scores import Int8Scores

            self.int8_scores = Int8Scores.build(self.vectors)
        else:
            self.int8_scores.extend(self.vectors)
        kind = self.index_mode
        if kind == "auto":
            kind = "ivf" if self.n >= ANN_MIN_DOCS else "exact"
        if kind == "exact":
            self.ann = None
        elif self.ann is None or self.ann.kind != kind:
            self.ann = AnnIndex.build(kind, self.vectors, seed=self.seed)
        elif self.ann.n < self.n:
            self.ann.add(self.vectors[self.ann.n:])

    def append(self, vectors, ids):
        """Add rows: amortised O(new rows) (the buffer grows by doubling; only new int8 blocks are built)."""
        needed = self.n + len(vectors)
        if needed > self._buffer.shape[0] or not self._buffer.flags.writeable:
            grown = np.empty((max(needed, 2 * self.n), self.dimensions), self._buffer.dtype)
            grown[:self.n] = self._buffer[:self.n]
            self._buffer = grown
        self._buffer[self.n:needed] = vectors
        self.n = needed
        self.ids.extend(ids)
        self._update_passes()

    def search(self, queries, k, int8=None):
        """(indices int64 [q, min(k, n)], scores float32 [q, min(k, n)]): best first, ties in document order.

        ``int8``: None uses the int8 pass (when built) for up to INT8_MAX_QUERIES queries, where it
        measured faster; True/False force it (the answers are the same)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimensions:
            raise ValueError(f"queries must be [batch, {self.dimensions}], got shape {list(queries.shape)}")
        k = min(int(k), self.n)
        if int8 is None:
            int8 = len(queries) <= INT8_MAX_QUERIES
        int8 = self.int8_scores if int8 else None
        if len(queries) * self.n * self.dimensions < _ONE_THREAD_WORK or int8 is not None or self.ann is not None:
            with _one_blas_thread():
                return _top_k(self.vectors, queries, k, int8, self.ann)
        return _top_k(self.vectors, queries, k, int8, self.ann)

    def query(self, queries, k):
        """``search`` as lists of (id, score) pairs."""
        idx, scores = self.search(queries, k)
        ids = self.ids
        return [[(ids[i], s) for i, s in zip(row_idx, row_scores)] for row_idx, row_scores in
                zip(idx.tolist(), scores.tolist())]

    # -- persistence ------------------------------------------------------------------------------
    def write(self, directory):
        """Write vectors, ids, int8 blocks and the ANN index into ``directory``; returns their description."""
        directory = Path(directory)
        np.save(directory / VECTORS_FILE, np.asarray(self.vectors), allow_pickle=False)
        with open(directory / IDS_FILE, "w", encoding="utf-8") as f:
            json.dump(self.ids, f, ensure_ascii=False)
        return {"n": self.n, "dimensions": self.dimensions, "dtype": str(self._buffer.dtype),
                "int8_mode": self.int8_mode, "index_mode": self.index_mode, "seed": self.seed,
                "int8": None if self.int8_scores is None else self.int8_scores.write(directory),
                "ann": None if self.ann is None else self.ann.write(directory)}

    @classmethod
    def read(cls, directory, spec, mmap=False):
        """Load what ``write`` saved; ``mmap=True`` maps the vectors (and int8 blocks) instead of reading them."""
        from kerasllm.runtime.int8_scores import Int8Scores

        directory = Path(directory)
        try:
            n, d, dtype = spec["n"], spec["dimensions"], spec["dtype"]
            vectors = load_array(directory, "vectors", {"shape": [n, d], "dtype": dtype}, mmap)
            ids = check_ids(load_list(directory, "ids"), n)
            int8 = None if spec["int8"] is None else Int8Scores.read(directory, spec["int8"], mmap)
            ann = None if spec["ann"] is None else AnnIndex.read(directory, spec["ann"], mmap)
            return cls(vectors, ids, spec["int8_mode"], spec["index_mode"], spec["seed"], int8, ann)
        except (KeyError, TypeError) as e:
            raise ValueError(f"{directory} is damaged: its search description lacks or mangles {e}") from None


def merge_top_k(shard_answers, k):
    """Merge the answers of shards that split one index by document range.

    ``shard_answers``: one entry per shard, in document order (shard 0 holds the first documents),
    each a list (one per query) of (id, score) pairs as ``query`` returns them with at least ``k``
    each (or all the shard holds). Returns per query the ``k`` best pairs, equal scores in document
    order: the answer one index over all the documents gives.
    """
    k = int(k)
    merged = []
    for per_shard in zip(*shard_answers):
        pairs = [(-score, shard, rank, doc_id) for shard, answer in enumerate(per_shard)
                 for rank, (doc_id, score) in enumerate(answer)]
        pairs.sort(key=lambda p: p[:3])
        merged.append([(doc_id, -neg) for neg, _, _, doc_id in pairs[:k]])
    return merged


# -- file helpers (shared by the index and the runtime) -------------------------------------------------
def check_ids(ids, n, name="ids"):
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


def load_array(path, name, spec, mmap):
    file = Path(path) / f"{name}.npy"
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"{path} is damaged: {file.name} is missing") from None
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{path} is damaged: cannot read {file.name} ({e})") from None
    if list(array.shape) != list(spec["shape"]) or str(array.dtype) != spec["dtype"]:
        raise ValueError(f"{path} is damaged: {file.name} holds {array.dtype}{list(array.shape)}, "
                         f"expected {spec['dtype']}{list(spec['shape'])}")
    return array


def load_list(path, name):
    file = Path(path) / f"{name}.json"
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
