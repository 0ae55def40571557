"""Exact top-k search by inner product over a matrix of unit vectors (NumPy only).

Scores come from blocked matrix products (BLAS) and ``np.argpartition``, so memory stays
bounded (no [queries x documents] matrix for a million documents) and a float16 or memory-mapped
matrix is read one block at a time, converted to float32 as it is read.

With an ``Int8Scores`` of the vectors (large indexes), a fast int8 pass gives approximate scores
with a proven error bound; only the documents whose bound reaches the k-th best are rescored in
float32, so the answers are the same as the full scan's (up to float rounding among equal scores).
"""
from __future__ import annotations

import numpy as np
from threadpoolctl import ThreadpoolController

# Scores held at once (query rows x document rows): 4M floats = 16 MB.
_SCORE_BUDGET = 1 << 22
_MAX_DOC_BLOCK = 1 << 17
# Below this much work (multiply-adds), BLAS runs on one thread: small products gain little from a
# second thread, and on a busy machine waiting for one costs a scheduler time slice (~16 ms).
_ONE_THREAD_WORK = 1 << 28
_controller = ThreadpoolController()  # finds NumPy's BLAS once (ms), not in the first query


def _one_blas_thread():
    return _controller.limit(limits=1, user_api="blas")


def top_k(vectors, queries, k, int8_scores=None):
    """The ``k`` best rows of ``vectors`` for each query, by inner product.

    Args:
        vectors: [n, d] float32 or float16 array (may be a np.memmap).
        queries: [q, d] float32 array.
        k: how many to return; more than ``n`` returns all ``n``.
        int8_scores: optional ``kerasllm.runtime.int8_scores.Int8Scores`` of ``vectors``: candidates
            come from its fast approximate scores and bounds, and are rescored exactly.

    Returns (indices int64 [q, min(k, n)], scores float32 [q, min(k, n)]), best first (equal scores
    in index order).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.shape[0] * vectors.shape[0] * vectors.shape[1] < _ONE_THREAD_WORK or int8_scores is not None:
        with _one_blas_thread():
            return _top_k(vectors, queries, k, int8_scores)
    return _top_k(vectors, queries, k, int8_scores)


def _top_k(vectors, queries, k, int8_scores):
    n = vectors.shape[0]
    k = min(int(k), n)
    n_queries = queries.shape[0]
    best_idx = np.zeros((n_queries, k), np.int64)
    best_score = np.zeros((n_queries, k), np.float32)
    if k == 0 or n_queries == 0:
        return best_idx, best_score
    zero = ~queries.any(axis=1)
    if zero.any():  # no feature: every score is 0, so the first k documents in index order
        best_idx[zero] = np.arange(k)
        if zero.all():
            return best_idx, best_score
        idx, scores = _top_k(vectors, queries[~zero], k, int8_scores)
        best_idx[~zero], best_score[~zero] = idx, scores
        return best_idx, best_score
    if int8_scores is not None and n > 4 * k:
        return _top_k_int8(vectors, queries, k, int8_scores, best_idx, best_score)
    doc_block = int(min(n, _MAX_DOC_BLOCK, max(_SCORE_BUDGET // n_queries, 4 * k, 1024)))
    query_block = max(1, _SCORE_BUDGET // doc_block)
    convert = vectors.dtype != np.float32
    for q0 in range(0, n_queries, query_block):
        q = queries[q0:q0 + query_block]
        cand_idx, cand_score = None, None
        for d0 in range(0, n, doc_block):
            block = vectors[d0:d0 + doc_block]
            if convert:
                block = block.astype(np.float32)
            scores = q @ block.T  # [queries, block]
            idx = _top_columns(scores, k)
            sc = np.take_along_axis(scores, idx, axis=1)
            idx += d0
            if cand_idx is None:
                cand_idx, cand_score = idx, sc
            else:
                cand_idx = np.concatenate([cand_idx, idx], axis=1)
                cand_score = np.concatenate([cand_score, sc], axis=1)
                keep = _top_columns(cand_score, k)
                cand_idx = np.take_along_axis(cand_idx, keep, axis=1)
                cand_score = np.take_along_axis(cand_score, keep, axis=1)
        # Best first; ties by index, so results do not depend on block sizes.
        for row in range(cand_idx.shape[0]):
            order = np.lexsort((cand_idx[row], -cand_score[row]))
            best_idx[q0 + row] = cand_idx[row, order]
            best_score[q0 + row] = cand_score[row, order]
    return best_idx, best_score


def _top_k_int8(vectors, queries, k, int8_scores, best_idx, best_score):
    n = vectors.shape[0]
    chunk = max(1, _SCORE_BUDGET // n)
    for q0 in range(0, len(queries), chunk):
        q = queries[q0:q0 + chunk]
        approx, bound = int8_scores(q)
        for row in range(len(q)):
            lower = approx[row] - bound[row]
            kth = np.partition(lower, n - k)[n - k]  # the k-th best score is at least this
            candidates = np.flatnonzero(approx[row] + bound[row] >= kth)
            if len(candidates) > n // 8:  # bounds too loose (e.g. a zero query): score every document
                idx, sc = _top_k(vectors, q[row:row + 1], k, None)
                best_idx[q0 + row], best_score[q0 + row] = idx[0], sc[0]
                continue
            exact = np.asarray(vectors[candidates], dtype=np.float32) @ q[row]
            keep = _top_columns(exact[None, :], k)[0]
            order = np.lexsort((candidates[keep], -exact[keep]))
            best_idx[q0 + row] = candidates[keep][order]
            best_score[q0 + row] = exact[keep][order]
    return best_idx, best_score


def _top_columns(scores, k):
    """Column indices of the k largest scores of each row (unordered)."""
    if scores.shape[1] <= k:
        return np.broadcast_to(np.arange(scores.shape[1]), scores.shape).copy()
    return np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
