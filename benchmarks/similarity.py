"""Similarity index vs scikit-learn LSA and gensim LSI, measured fairly in one run; search passes; scale.

Part 1 (labelled data; precision@10 = share of the 10 nearest training texts with the query's
label; fit = vectorize + SVD + document vectors, median of alternating repeats), on SMS, the
built-in documentation topics, TREC and SUBJ (../shared/data; shared splits):
  - kerasllm at its defaults (n_components=k);
  - scikit-learn at its defaults: TfidfVectorizer() + TruncatedSVD(k) (n_iter=5, float64);
  - scikit-learn matched to kerasllm: sublinear_tf, kerasllm's tokens (words of 2+ characters;
    kerasllm also keeps single CJK letters, absent here), float32, TruncatedSVD(k, n_iter=2);
  - gensim LSI at its defaults (simple_preprocess, TfidfModel, LsiModel(num_topics=k));
  - raw TF-IDF cosine (kerasllm's sparse features, no SVD): the precision the SVD should keep.
Part 2 (search passes): one query vs batches, int8 first pass vs float32 scan, on an index of
windows of the shared corpora; this is what ``INT8_MAX_QUERIES`` in kerasllm/runtime/search.py rests on.
Part 3 (--scale N ...): ANN (FAISS ivf) at N documents made of real text (overlapping windows of the
shared corpora), each size in its own process: fit time, recall@10 against the exact
scan, one-query p50, peak memory. --vocab: a corpus with >= 500k distinct features (word 1-3-grams).

    python benchmarks/similarity.py                        # parts 1 and 2 (a few minutes)
    python benchmarks/similarity.py --scale 1000000 5000000 --k 128   # part 3 (long: run in the background)

BLAS and FAISS run on one thread unless --threads says otherwise.
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
SHARED = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
              ROOT.parent / "shared" / "data")
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # kerasllm's tokens on these (non-CJK) sets: words of 2+ characters


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def normalize(x):
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return x / norms


def neighbours(doc_vectors, query_vectors, k=10):
    """Top-k by cosine, ties in document order (the same rule for every system)."""
    scores = query_vectors @ doc_vectors.T
    scores = scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def precision_at_10(rows, train_labels, test_labels):
    train_labels = np.asarray(train_labels)
    return float(np.mean([np.mean(train_labels[row[:10]] == label) for row, label in zip(rows, test_labels)]))


# -- part 1: systems ---------------------------------------------------------------------------
class Kerasllm:
    name = "kerasllm defaults"

    def __init__(self, k):
        self.k = k

    def fit(self, texts):
        from kerasllm.models.similarity import SimilarityIndex

        self.index = SimilarityIndex(n_components=self.k, index="exact").fit(texts)

    def neighbours(self, texts):
        return [[i for i, _ in row] for row in self.index.query(texts, k=10)]


class RawTfidf:
    name = "raw TF-IDF cosine"

    def __init__(self, k):
        pass

    def fit(self, texts):
        from kerasllm.text.tfidf import TfidfFeatures

        self.features = TfidfFeatures()
        self.x = self.features.fit_transform(texts)

    def neighbours(self, texts):
        return neighbours(self.x, self.features.transform(texts))


class ScikitLearn:
    name = "scikit-learn defaults"
    options = {}
    svd_options = {}

    def __init__(self, k):
        self.k = k

    def fit(self, texts):
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(**self.options)
        self.svd = TruncatedSVD(self.k, random_state=0, **self.svd_options)
        self.vectors = normalize(self.svd.fit_transform(self.vectorizer.fit_transform(texts)))

    def neighbours(self, texts):
        return neighbours(self.vectors, normalize(self.svd.transform(self.vectorizer.transform(texts))))


class ScikitLearnMatched(ScikitLearn):
    name = "scikit-learn matched"
    options = {"sublinear_tf": True, "token_pattern": TOKEN_PATTERN, "dtype": np.float32}
    svd_options = {"n_iter": 2}


class Gensim:
    name = "gensim LSI defaults"

    def __init__(self, k):
        self.k = k

    def fit(self, texts):
        from gensim.corpora import Dictionary
        from gensim.models import LsiModel, TfidfModel
        from gensim.utils import simple_preprocess

        tokens = [simple_preprocess(t) for t in texts]
        self.dictionary = Dictionary(tokens)
        bows = [self.dictionary.doc2bow(t) for t in tokens]
        self.tfidf = TfidfModel(bows)
        self.lsi = LsiModel(self.tfidf[bows], num_topics=self.k, id2word=self.dictionary, random_seed=0)
        self.vectors = self._dense(self.tfidf[bows])

    def _dense(self, corpus):
        from gensim.matutils import corpus2dense

        return normalize(corpus2dense(self.lsi[corpus], self.lsi.num_topics).T)

    def neighbours(self, texts):
        from gensim.utils import simple_preprocess

        bows = [self.dictionary.doc2bow(simple_preprocess(t)) for t in texts]
        return neighbours(self.vectors, self._dense(self.tfidf[bows]))


SYSTEMS = [Kerasllm, ScikitLearn, ScikitLearnMatched, Gensim, RawTfidf]


def compare(name, train, train_labels, test, test_labels, k, repeats):
    systems = [cls(k) for cls in SYSTEMS]
    fit = {s.name: [] for s in systems}
    for _ in range(repeats):  # alternate A B C A B C
        for s in systems:
            start = time.perf_counter()
            s.fit(train)
            fit[s.name].append(time.perf_counter() - start)
    rows = [{"data": name, "system": s.name, "docs": len(train), "k": k, "fit_s": float(np.median(fit[s.name])),
             "p@10": precision_at_10(s.neighbours(test), train_labels, test_labels)} for s in systems]
    by = {r["system"]: r for r in rows}
    ours, matched = by["kerasllm defaults"], by["scikit-learn matched"]
    rows.append({"data": name, "system": "kerasllm / sklearn matched", "fit_s": ours["fit_s"] / matched["fit_s"],
                 "p@10": ours["p@10"] - matched["p@10"]})
    return rows


def read_tsv(name):
    labels, texts = [], []
    with open(SHARED / name, encoding="utf-8") as f:
        for line in f:
            label, text = line.rstrip("\n").split("\t", 1)
            labels.append(label)
            texts.append(text)
    return texts, labels


def sms_data():
    from kerasllm.data import stratified_split

    return stratified_split(*read_tsv("sms_spam.tsv"), 0.2, seed=0)


def subj_data():
    from kerasllm.data import stratified_split

    return stratified_split(*read_tsv("subj.tsv"), 0.2, seed=0)


def trec_data():
    return (*read_tsv("trec6_train.tsv"), *read_tsv("trec6_test.tsv"))


def topics_data():
    from sklearn.model_selection import train_test_split

    from kerasllm.data import default_documents

    texts, labels = default_documents()
    a, b, c, d = train_test_split(texts, labels, test_size=0.2, random_state=0)
    return list(a), list(c), list(b), list(d)


# -- real-text documents for parts 2 and 3 --------------------------------------------------------
def corpus_tokens():
    """All words of the shared corpora, in order (about 0.6M)."""
    from kerasllm.text.tfidf import TfidfFeatures

    split = TfidfFeatures().split
    words = split((SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8"))
    for name in ("sms_spam.tsv", "subj.tsv", "cr.tsv", "trec6_train.tsv", "trec6_test.tsv"):
        for text in read_tsv(name)[0]:
            words += split(text)
    return np.array(words, dtype=object)


def window_documents(n, seed=0, words=None):
    """n documents, each a window of 8-40 consecutive words at a random place in the shared corpora:
    real words and word order; windows overlap, so there are near-duplicates as in real collections."""
    words = corpus_tokens() if words is None else words
    rng = np.random.default_rng(seed)
    docs = []
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        starts = rng.integers(0, len(words) - 40, size=m)
        lengths = rng.integers(8, 41, size=m)
        docs += [" ".join(words[a:a + length]) for a, length in zip(starts.tolist(), lengths.tolist())]
    return docs


def search_passes(size, k, repeats):
    """Part 2: one query and batches, int8 pass vs float32 scan (the same exact answers)."""
    from kerasllm.models.similarity import SimilarityIndex

    docs = window_documents(size + 256, seed=1)
    index = SimilarityIndex(n_components=k, keep_texts=False, index="exact", int8_search=True).fit(docs[:size])
    queries = index.embed(docs[size:])
    searcher = index.searcher_
    rows = []
    for batch in (1, 4, 16, 64, 256):
        times = {}
        for name, int8 in (("int8", True), ("float32", False)):
            searcher.search(queries[:batch], 10, int8=int8)  # warm-up (the first int8 use builds its kernels)
            if batch == 1:
                times[name] = float(np.median([median_time(lambda q=q: searcher.search(q[None], 10, int8=int8), 3)
                                               for q in queries[:100]]))
            else:
                times[name] = median_time(lambda: searcher.search(queries[:batch], 10, int8=int8), repeats) / batch
        rows.append({"docs": size, "k": k, "batch": batch, "int8_ms_per_query": times["int8"] * 1e3,
                     "float32_ms_per_query": times["float32"] * 1e3,
                     "int8/float32": times["int8"] / times["float32"]})
    return rows


# -- part 3: scale (one size per process) --------------------------------------------------------------
def scale_child(size, k, kind, nprobes):
    from kerasllm.models.similarity import SimilarityIndex
    from kerasllm.runtime.search import Searcher

    words = corpus_tokens()
    docs = window_documents(size, seed=2, words=words)
    queries = window_documents(200, seed=3, words=words)
    start = time.perf_counter()
    index = SimilarityIndex(n_components=k, dtype="float16", keep_texts=False, int8_search=False, index=kind,
                            max_fit_docs=200_000).fit(docs)
    fit = time.perf_counter() - start
    features = index.features_.n_features
    del docs
    vectors = index.embed(queries)
    # exact answers: the float32 scan of every document
    exact = Searcher(index.vectors_, index.ids_, int8=False, index="exact").search(vectors, 10)[0]
    ann = index.searcher_.ann
    rows = []
    for nprobe in nprobes:
        if kind == "ivf":
            ann.nprobe = nprobe
        else:
            ann.ef_search = nprobe
        ann._apply()
        got = [index.searcher_.search(v[None], 10)[0][0] for v in vectors]
        recall = float(np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact)]))
        search = [median_time(lambda v=v: index.searcher_.search(v[None], 10), 3) for v in vectors]
        query = [median_time(lambda t=t: index.query([t], k=10), 1) for t in queries[:100]]
        rows.append({"docs": size, "k": k, "index": kind, "features": features, "fit_s": fit,
                     "nprobe/ef": nprobe, "recall@10": recall, "search_p50_ms": float(np.median(search)) * 1e3,
                     "search_p99_ms": float(np.percentile(search, 99)) * 1e3,
                     "query_p50_ms": float(np.median(query)) * 1e3,
                     "vectors_mb": index.vectors_.nbytes / 2 ** 20,
                     "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    for row in rows:
        print(json.dumps(row), flush=True)


def vocab_child(size, k):
    """A corpus with >= 500k distinct features: components stay bounded by max_features."""
    from kerasllm.export.similarity import check_tflite_fits
    from kerasllm.models.similarity import SimilarityIndex
    from kerasllm.text.tfidf import TfidfFeatures

    docs = window_documents(size, seed=4)
    distinct = TfidfFeatures(ngram_range=(1, 3), max_features=None).fit(docs).n_features
    start = time.perf_counter()
    index = SimilarityIndex(n_components=k, ngram_range=(1, 3), keep_texts=False, index="exact").fit(docs)
    fit = time.perf_counter() - start
    try:
        check_tflite_fits(index)
        tflite = "fits"
    except ValueError as e:
        tflite = str(e)[:60]
    print(json.dumps({"docs": size, "k": k, "distinct_features": distinct, "kept_features": index.features_.n_features,
                      "components_mb": index.components_.nbytes / 2 ** 20, "fit_s": fit, "tflite": tflite,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def table(rows, columns):
    widths = [max([len(c)] + [len(fmt(r.get(c))) for r in rows]) for c in columns]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(fmt(r.get(c)).rjust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def fmt(value):
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def run_child(args, extra):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--k", str(args.k), *extra],
                         capture_output=True, text=True, env=env)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        return []
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--k", type=int, default=256, help="SVD dimensions for every system (default 256)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--passes-docs", type=int, default=100_000, help="index size of part 2 (0: skip)")
    parser.add_argument("--scale", type=int, nargs="*", default=[], help="part 3 sizes (e.g. 1000000 5000000)")
    parser.add_argument("--index", default="ivf", choices=("ivf", "hnsw"), help="part 3 ANN kind")
    parser.add_argument("--nprobe", type=int, nargs="*", default=[32, 64, 128], help="part 3 nprobe (ivf) or ef (hnsw)")
    parser.add_argument("--vocab", type=int, default=0, help="documents of the large-vocabulary run (0: skip)")
    parser.add_argument("--skip-fair", action="store_true", help="skip part 1")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/FAISS threads (default 1)")
    parser.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    import scipy.linalg  # noqa: F401  (load every BLAS first, so the limit below reaches them all)
    import sklearn.utils.extmath  # noqa: F401
    from threadpoolctl import threadpool_info, threadpool_limits

    threadpool_limits(args.threads)
    try:
        import faiss

        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        pass
    if args.scale_child:
        return scale_child(args.scale_child, args.k, args.index, args.nprobe)
    if args.vocab_child:
        return vocab_child(args.vocab_child, args.k)
    import gensim
    import scipy
    import sklearn

    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} threads)" for i in threadpool_info()
            if i["user_api"] == "blas"]
    print(f"numpy {np.__version__}, scipy {scipy.__version__}, scikit-learn {sklearn.__version__}, gensim "
          f"{gensim.__version__}; BLAS: {', '.join(blas)}; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    if not args.skip_fair:
        rows = []
        datasets = [("topics", topics_data)]
        if SHARED.is_dir():
            datasets = [("sms", sms_data), ("topics", topics_data), ("trec", trec_data), ("subj", subj_data)]
        else:
            print(f"{SHARED} is absent: only the built-in topics", file=sys.stderr)
        for name, load in datasets:
            rows += compare(name, *load(), k=args.k, repeats=args.repeats)
        print(f"\nPart 1: precision@10 and fit time, k={args.k}, median of {args.repeats} alternating fits "
              f"(last row per set: kerasllm fit / matched scikit-learn fit, and p@10 difference)")
        print(table(rows, ["data", "system", "docs", "k", "fit_s", "p@10"]), flush=True)
    if args.passes_docs and SHARED.is_dir():
        rows = search_passes(args.passes_docs, args.k, args.repeats)
        print(f"\nPart 2: search passes over {args.passes_docs} documents (windows of the shared corpora), top-10; "
              f"per-query time (batch 1: median over 100 queries)")
        print(table(rows, ["docs", "k", "batch", "int8_ms_per_query", "float32_ms_per_query", "int8/float32"]),
              flush=True)
    if args.scale:
        rows = []
        for size in args.scale:
            rows += run_child(args, ["--scale-child", str(size), "--index", args.index, "--nprobe",
                                     *map(str, args.nprobe)])
        print(f"\nPart 3: {args.index} index (FAISS, 8-bit codes, exact rescoring of candidates) on documents "
              f"of real text; recall@10 against the exact scan over 200 queries; one query at a time")
        print(table(rows, ["docs", "k", "index", "features", "fit_s", "nprobe/ef", "recall@10", "search_p50_ms",
                           "search_p99_ms", "query_p50_ms", "vectors_mb", "peak_rss_mb"]), flush=True)
    if args.vocab:
        rows = run_child(args, ["--vocab-child", str(args.vocab)])
        print("\nLarge vocabulary: word 1-3-grams; max_features (default 2^18) bounds components")
        print(table(rows, ["docs", "k", "distinct_features", "kept_features", "components_mb", "fit_s", "tflite",
                           "peak_rss_mb"]), flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
