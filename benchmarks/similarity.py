"""Similarity index vs scikit-learn LSA (TfidfVectorizer + TruncatedSVD), measured in one run.

Part 1 (labelled data, same k for both): fit time, time to embed 1,000 query texts, top-10 search
time of one query against the index (scikit-learn's peer: NearestNeighbors, cosine, brute force)
and precision@10 (share of the 10 neighbours with the query's label). Data: the SMS collection in
../shared/data (stratified 80/20 split, seed 0: the 20% are the queries) and, as a second data set,
the paragraphs of Python's documentation topics labelled by topic.
Part 2 (synthetic documents, 10k/100k/1M): fit time, peak memory (each size in its own process),
and one-query top-10 search time, to show how time and memory grow.

    python benchmarks/similarity.py                      # everything (about 10 minutes on 2 busy cores)
    python benchmarks/similarity.py --sizes 10000 100000 # skip the million

Runs pinned to one BLAS thread (threadpoolctl) unless --threads says otherwise; variants alternate
(A B A B ...) and the median of the repeats is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def precision_at_10(neighbours, train_labels, test_labels):
    return float(np.mean([np.mean([train_labels[i] == label for i in row[:10]])
                          for row, label in zip(neighbours, test_labels)]))


# -- part 1: against scikit-learn on labelled data ---------------------------------------------
class Ours:
    name = "kerasllm"

    def __init__(self, k, seed=0):
        self.k, self.seed = k, seed

    def fit(self, texts):
        import tasks

        self.index = tasks.build_similarity_index(texts, n_components=self.k, seed=self.seed)

    def embed(self, texts):
        return self.index.embed(texts)

    def search(self, vector):
        from kerasllm.runtime.search import top_k

        return top_k(self.index.vectors, vector[None, :], 10, self.index._int8)[0][0]

    def neighbours(self, texts):
        return [[i for i, _ in r] for r in self.index.query(texts, k=10)]


class ScikitLearn:
    name = "scikit-learn"

    def __init__(self, k, seed=0):
        self.k, self.seed = k, seed

    def fit(self, texts):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.neighbors import NearestNeighbors
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import Normalizer

        self.pipeline = make_pipeline(TfidfVectorizer(), TruncatedSVD(self.k, random_state=self.seed),
                                      Normalizer(copy=False))
        self.vectors = self.pipeline.fit_transform(texts).astype(np.float32)
        self.nn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(self.vectors)

    def embed(self, texts):
        return self.pipeline.transform(texts).astype(np.float32)

    def search(self, vector):
        return self.nn.kneighbors(vector[None, :], return_distance=False)[0]

    def neighbours(self, texts):
        return self.nn.kneighbors(self.embed(texts), return_distance=False)


def compare(name, train, train_labels, test, test_labels, k, repeats):
    systems = [Ours(k), ScikitLearn(k)]
    fit = {s.name: [] for s in systems}
    for _ in range(repeats):  # alternate A B A B
        for s in systems:
            start = time.perf_counter()
            s.fit(train)
            fit[s.name].append(time.perf_counter() - start)
    queries = (test * (1000 // len(test) + 1))[:1000]
    rows = []
    for s in systems:
        embed = median_time(lambda: s.embed(queries), repeats)
        vectors = s.embed(test[:200])
        s.search(vectors[0])  # warm-up
        search = float(np.median([median_time(lambda v=v: s.search(v), 3) for v in vectors]))
        precision = precision_at_10(s.neighbours(test), train_labels, test_labels)
        rows.append({"data": name, "system": s.name, "docs": len(train), "k": k,
                     "fit_s": float(np.median(fit[s.name])), "embed_1000_s": embed, "search_ms": search * 1e3,
                     "p@10": precision})
    return rows


def sms_data():
    from kerasllm.data import read_table, stratified_split

    texts, labels = read_table(SHARED / "sms_spam.tsv", "text", "label")
    return stratified_split(texts, labels, 0.2, seed=0)


def topics_data():
    from sklearn.model_selection import train_test_split

    from kerasllm.data import default_documents

    texts, labels = default_documents()
    a, b, c, d = train_test_split(texts, labels, test_size=0.2, random_state=0)
    return list(a), list(c), list(b), list(d)


# -- part 2: growth on synthetic documents -------------------------------------------------
def synthetic_documents(n, seed=0, n_topics=200, vocabulary=30000, chunk=50_000):
    """Sentences of made-up words: each document mixes one topic's words (Zipf) with common words.
    Made in chunks, so the generator's own arrays stay small next to the index being measured."""
    rng = np.random.default_rng(seed)
    syllables = np.array(["ka", "lo", "mi", "ne", "ru", "ta", "vo", "zi", "pe", "su", "da", "fo", "gi", "ha", "ju"])
    parts = rng.integers(0, len(syllables), size=(vocabulary, 3))
    words = np.array(["".join(syllables[p]) + str(i % 97) for i, p in enumerate(parts)])
    zipf = 1.0 / np.arange(1, 301) ** 1.1
    zipf /= zipf.sum()
    topic_words = rng.integers(0, vocabulary, size=(n_topics, 300))
    docs = []
    for start in range(0, n, chunk):
        docs += _synthetic_chunk(rng, min(chunk, n - start), words, zipf, topic_words)
    return docs


def _synthetic_chunk(rng, n, words, zipf, topic_words):
    vocabulary, n_topics = len(words), len(topic_words)
    lengths = rng.integers(8, 30, size=n)
    topics = rng.integers(0, n_topics, size=n)
    total = int(lengths.sum())
    from_topic = rng.random(total) < 0.6
    ranks = rng.choice(300, size=total, p=zipf)
    background = rng.zipf(1.3, size=total) % vocabulary
    doc_of_word = np.repeat(np.arange(n), lengths)
    ids = np.where(from_topic, topic_words[topics[doc_of_word], ranks], background)
    tokens = words[ids]
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    return [" ".join(tokens[bounds[i]:bounds[i + 1]]) for i in range(n)]


def child(size, k, dtype):
    """One index size in a fresh process, so peak memory is this size's alone."""
    import tasks
    from kerasllm.runtime.search import top_k

    docs = synthetic_documents(size + 200)  # the last 200 are the queries (same topics and words)
    docs, queries = docs[:size], docs[size:]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    index = tasks.build_similarity_index(docs, n_components=k, dtype=dtype, keep_texts=False)
    fit = time.perf_counter() - start
    del docs
    vectors = index.embed(queries)
    index.query(queries[:1], k=10)  # warm-up
    search = float(np.median([median_time(lambda v=v: top_k(index.vectors, v[None, :], 10, index._int8), 3)
                              for v in vectors]))
    search_f32 = float(np.median([median_time(lambda v=v: top_k(index.vectors, v[None, :], 10), 3)
                                  for v in vectors[:50]]))
    query = float(np.median([median_time(lambda t=t: index.query([t], k=10), 3) for t in queries[:50]]))
    embed = median_time(lambda: index.embed(queries[:100]), 3) / 100
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"docs": size, "k": index.dimensions, "dtype": dtype, "features": index.features.n_features,
                      "fit_s": fit, "search_ms": search * 1e3, "search_f32_ms": search_f32 * 1e3,
                      "query_ms": query * 1e3, "embed_ms": embed * 1e3, "int8": index._int8 is not None,
                      "index_mb": index.vectors.nbytes / 2 ** 20, "peak_rss_mb": peak / 1024,
                      "rss_before_fit_mb": before / 1024}))


def table(rows, columns):
    widths = [max([len(c)] + [len(fmt(r.get(c))) for r in rows]) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=256, help="SVD dimensions for both systems (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16"))
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import scipy.linalg  # noqa: F401  (load every BLAS first, so the limit below reaches them all)
    import sklearn.utils.extmath  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(args.threads)
    if args.child:
        child(args.child, args.k, args.dtype)
        return
    rows = []
    datasets = [("topics", topics_data)]
    if (SHARED / "sms_spam.tsv").is_file():
        datasets.insert(0, ("sms", sms_data))
    else:
        print(f"{SHARED} is absent: SMS rows skipped", file=sys.stderr)
    for name, load in datasets:
        rows += compare(name, *load(), k=args.k, repeats=args.repeats)
    growth = []
    for size in args.sizes:
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        out = subprocess.run([sys.executable, __file__, "--child", str(size), "--k", str(args.k),
                              "--dtype", args.dtype, "--threads", str(args.threads)],
                             capture_output=True, text=True, env=env)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            growth.append({"docs": size, "fit_s": None})
            continue
        growth.append(json.loads(out.stdout.strip().splitlines()[-1]))

    import scipy
    import sklearn

    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"\nnumpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}; "
          f"BLAS: {', '.join(blas)}; median of {args.repeats} alternating repeats")
    by = {(r["data"], r["system"]): r for r in rows}
    for name, _ in datasets:
        ours, theirs = by[(name, "kerasllm")], by[(name, "scikit-learn")]
        rows.append({"data": name, "system": "ratio kerasllm/sklearn",
                     **{c: ours[c] / theirs[c] for c in ("fit_s", "embed_1000_s", "search_ms", "p@10")}})
    print("\nPart 1: same texts, same k (search: one query, top-10, median over 200 queries)")
    print(table(rows, ["data", "system", "docs", "k", "fit_s", "embed_1000_s", "search_ms", "p@10"]))
    if not growth:
        return
    print("\nPart 2: synthetic documents (each size in its own process; search: one query, top-10)")
    print(table(growth, ["docs", "k", "dtype", "features", "fit_s", "embed_ms", "int8", "search_ms", "search_f32_ms",
                         "query_ms", "index_mb", "peak_rss_mb"]))
    print("search_ms: the index's search (int8 first pass + exact float32 rescoring when int8 is True); "
          "search_f32_ms: a plain float32 scan; query_ms: index.query([text], k=10), text to answer")


if __name__ == "__main__":
    main()
