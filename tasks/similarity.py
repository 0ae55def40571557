"""Similarity task: build a TF-IDF + truncated-SVD (LSA) index over the user's documents."""


def build_similarity_index(docs, ids=None, n_components=256, seed=0, **options):
    """Fit a ``kerasllm.SimilarityIndex`` on ``docs`` (list of str); ``ids`` default to 0..n-1.

    ``options`` are the index's settings (``ngram_range``, ``char_ngram_range``, ``min_df``, ``max_df``,
    ``max_features``, ``sublinear_tf``, ``n_iter``, ``max_fit_docs``, ``dtype``, ``keep_texts``,
    ``int8_search``, ``index`` ("exact", "ivf", "hnsw", "auto"), ``refit_threshold``).
    The index answers ``query``, ``similarity``, ``embed``, grows with ``add`` and saves with ``save``.
    """
    from kerasllm.models.similarity import SimilarityIndex

    return SimilarityIndex(n_components=n_components, seed=seed, **options).fit(docs, ids)
