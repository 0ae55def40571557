"""Classifier quality: the default model, its two paths alone, TF-IDF + logistic regression and a
linear model over the default's own features, on the same splits, in one run.

Sets (../shared/data, see its README for splits and reference numbers): TREC-6 (its own
train/test files), CR, SUBJ and SMS spam (stratified 80/20, seed 0), plus the built-in
documentation topics (five topics, stratified 80/20, seed 0; always present).

Rows per set: ``default``; ``bag of n-grams alone`` (``recurrent=False``); ``recurrent alone``
(``bag_of_ngrams=False``); ``tfidf+lr uni`` (scikit-learn defaults, ``sublinear_tf=True``);
``tfidf+lr uni+bi C=10`` (``ngram_range=(1, 2)``, ``sublinear_tf=True``, ``C=10``); ``linear over
our features`` (logistic regression, C=10, on the default's own bag: word ids, hashed bigrams and
character n-grams from its tokenizer, L2-normalised). Neural rows: mean and spread (max - min)
over the seeds; the scikit-learn rows are deterministic.

    python benchmarks/classifier_quality.py                      # all sets, seeds 0 1 2
    python benchmarks/classifier_quality.py --sets trec cr --seeds 0 --models default

Pinned to one core with one TensorFlow thread unless --no-pin.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (or beside the folder of worktrees that holds it)
DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data")
SETS = ("trec", "cr", "subj", "sms", "topics")
NEURAL = {"default": {}, "bag of n-grams alone": {"recurrent": False}, "recurrent alone": {"bag_of_ngrams": False}}
LINEAR = ("tfidf+lr uni", "tfidf+lr uni+bi C=10", "linear over our features")
MODELS = {"default": "default", "bag": "bag of n-grams alone", "recurrent": "recurrent alone",
          "tfidf_uni": "tfidf+lr uni", "tfidf_bi": "tfidf+lr uni+bi C=10", "ours_linear": "linear over our features"}


def load_set(name):
    from kerasllm.data import default_classification_data, read_table, stratified_split

    if name == "topics":
        return stratified_split(*default_classification_data(), test_size=0.2, seed=0)
    if name == "trec":
        if not (DATA / "trec6_train.tsv").is_file():
            return None
        return (*read_table(DATA / "trec6_train.tsv", "text", "label"), *read_table(DATA / "trec6_test.tsv", "text", "label"))
    path = DATA / {"cr": "cr.tsv", "subj": "subj.tsv", "sms": "sms_spam.tsv"}[name]
    if not path.is_file():
        return None
    return stratified_split(*read_table(path, "text", "label"), test_size=0.2, seed=0)


def linear_rows(train, train_labels, test, test_labels, wanted):
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out = {}
    y = np.array(test_labels)
    if "tfidf+lr uni" in wanted:
        v = TfidfVectorizer(sublinear_tf=True)
        lr = LogisticRegression(max_iter=3000).fit(v.fit_transform(train), train_labels)
        out["tfidf+lr uni"] = float(np.mean(lr.predict(v.transform(test)) == y))
    if "tfidf+lr uni+bi C=10" in wanted:
        v = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2))
        lr = LogisticRegression(C=10, max_iter=3000).fit(v.fit_transform(train), train_labels)
        out["tfidf+lr uni+bi C=10"] = float(np.mean(lr.predict(v.transform(test)) == y))
    if "linear over our features" in wanted:
        x_train, x_test = our_features(train, test)
        lr = LogisticRegression(C=10, max_iter=3000).fit(x_train, train_labels)
        out["linear over our features"] = float(np.mean(lr.predict(x_test) == y))
    return out


def our_features(train, test):
    """The default model's bag: its tokenizer's word and character n-gram ids plus its hashed
    bigrams (the same hashing as ``HashedBigrams``), binary, L2-normalised."""
    import numpy as np
    from scipy.sparse import csr_matrix
    from sklearn.preprocessing import normalize

    from kerasllm.models.classifier import ClassifierConfig
    from kerasllm.text.word import WordTokenizer

    cfg = ClassifierConfig()
    max_length = int(np.clip(np.percentile(WordTokenizer().lengths(train), 95), 16, 128))
    tok = WordTokenizer(max_length=max_length, char_ngrams=cfg.char_ngrams).fit(
        train, max_tokens=cfg.vocab_size, max_char_tokens=cfg.char_vocab_size)
    total = tok.total_vocab_size

    def features(texts):
        ids = tok.encode(texts)
        words = ids[:, :max_length]
        prev = np.pad(words[:, :-1], [(0, 0), (1, 0)])
        bigrams = np.where((prev > 0) & (words > 0), (prev * tok.vocab_size + words) % cfg.bigram_buckets + total, 0)
        grams = np.concatenate([ids, bigrams], axis=1)
        rows = np.repeat(np.arange(len(texts)), grams.shape[1])
        keep = grams.ravel() > 0
        m = csr_matrix((np.ones(keep.sum()), (rows[keep], grams.ravel()[keep])),
                       shape=(len(texts), total + cfg.bigram_buckets))
        m.data[:] = 1.0
        return normalize(m)

    return features(train), features(test)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--set-option", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra TextClassifier settings for the neural rows (experiments)")
    args = parser.parse_args()
    if not args.no_pin:
        os.environ["OMP_NUM_THREADS"] = "1"
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    sys.path.insert(0, str(ROOT))

    import numpy as np

    import tasks

    if not args.no_pin:
        from kerasllm._tf import tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    extra = {}
    for item in args.set_option:
        key, value = item.split("=", 1)
        extra[key] = eval(value, {})  # benchmark-only: numbers, booleans, strings in quotes
    wanted = [MODELS[m] for m in args.models]
    results = {}  # (set, model) -> [accuracy per seed]
    for name in args.sets:
        data = load_set(name)
        if data is None:
            print(f"{name}: data not found under {DATA}, skipped", flush=True)
            continue
        train, train_labels, test, test_labels = data
        for model, accuracy in linear_rows(train, train_labels, test, test_labels, wanted).items():
            results[(name, model)] = [accuracy]
            print(f"{name:<7} {model:<26} {accuracy:.4f}", flush=True)
        for model, options in NEURAL.items():
            if model not in wanted:
                continue
            for seed in args.seeds:
                t0 = time.perf_counter()
                clf = tasks.train_classifier(train, train_labels, seed=seed, **{**extra, **options})
                accuracy = clf.evaluate(test, test_labels)["accuracy"]
                results.setdefault((name, model), []).append(accuracy)
                print(f"{name:<7} {model:<26} seed {seed} {accuracy:.4f}  ({time.perf_counter() - t0:.0f} s, "
                      f"{len(clf.history_.get('loss', []))} epochs)", flush=True)

    sets = [s for s in args.sets if any(k[0] == s for k in results)]
    print(f"\naccuracy on the test split; neural rows: mean (max-min) over seeds {args.seeds}"
          + (f"; settings {extra}" if extra else ""))
    print(f"{'model':<26}" + "".join(f"{s:>16}" for s in sets) + f"{'mean':>10}")
    means = {}
    for model in wanted:
        cells, values = [], []
        for s in sets:
            accs = results.get((s, model))
            if not accs:
                cells.append(f"{'-':>16}")
                continue
            values.append(np.mean(accs))
            spread = f" ({max(accs) - min(accs):.3f})" if len(accs) > 1 else ""
            cells.append(f"{np.mean(accs):>8.4f}{spread:<8}")
        means[model] = values
        mean = f"{np.mean(values):>10.4f}" if len(values) == len(sets) else f"{'-':>10}"
        print(f"{model:<26}" + "".join(cells) + mean)
    if "default" in means and "tfidf+lr uni+bi C=10" in means and len(means["default"]) == len(sets):
        diff = np.array(means["default"]) - np.array(means["tfidf+lr uni+bi C=10"])
        print(f"\ndefault - tfidf+lr uni+bi C=10: mean {diff.mean() * 100:+.2f} points; per set "
              + ", ".join(f"{s} {d * 100:+.2f}" for s, d in zip(sets, diff)))
    if "default" in means and "bag of n-grams alone" in means and len(means["bag of n-grams alone"]) == len(sets):
        wins = sum(a > b for a, b in zip(means["default"], means["bag of n-grams alone"]))
        print(f"default beats its bag of n-grams path alone on {wins} of {len(sets)} sets")
    if "recurrent alone" in means and "tfidf+lr uni" in means:
        for s, a, b in zip(sets, means["recurrent alone"], means["tfidf+lr uni"]):
            print(f"recurrent alone vs tfidf+lr uni on {s}: {a:.4f} vs {b:.4f}")


if __name__ == "__main__":
    main()
