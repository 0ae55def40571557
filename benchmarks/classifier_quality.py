"""Classifier quality: the default model, its two paths alone, TF-IDF + logistic regression and a
linear model over the default's own features, on the same splits, in one run.

Sets (../shared/data, see its README for splits and reference numbers): TREC-6 (its own
train/test files), CR, SUBJ and SMS spam (stratified 80/20, seed 0), plus the built-in
documentation topics (five topics, stratified 80/20, seed 0; always present). Not in the default
list: ``passages`` (long documents: which tenth of tiny Shakespeare a 250-word passage comes from;
passages from the first 80% of each tenth train, the rest test), where a model that reads only the
first 128 words loses to TF-IDF, which reads every word.

Rows per set: ``default``; ``bag of n-grams alone`` (``recurrent=False``); ``recurrent alone``
(``bag_of_ngrams=False``); ``tfidf+lr uni`` (scikit-learn defaults, ``sublinear_tf=True``);
``tfidf+lr uni+bi C=10`` (``ngram_range=(1, 2)``, ``sublinear_tf=True``, ``C=10``) and the same with raw
term frequency (``tfidf_bi_raw``, as the default's bag counts a repeated n-gram); ``linear over
our features`` (scikit-learn's LogisticRegression at its defaults, C=1, on the default's own bag
features: word, hashed-bigram and character n-gram ids, idf-weighted, L2-normalised; the bag path
is the same model with C=10). Neural rows: mean and spread (max - min)
over the seeds; the scikit-learn rows are deterministic.

    python benchmarks/classifier_quality.py                      # all sets, seeds 0 1 2
    python benchmarks/classifier_quality.py --sets trec cr --seeds 0 --models default
    python benchmarks/classifier_quality.py --sets cr subj --train-spans 4   # trained on phrases
    python benchmarks/classifier_quality.py --sets --tsv uci=out/uci.tsv     # any labelled file

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
OPTIONAL_SETS = ("passages",)
NEURAL = {"default": {}, "bag of n-grams alone": {"recurrent": False}, "recurrent alone": {"bag_of_ngrams": False}}
# the TF-IDF+LR rows: (TfidfVectorizer settings, C); raw tf is how the default's bag counts a repeated n-gram
TFIDF_ROWS = {"tfidf+lr uni": ({"sublinear_tf": True}, 1.0),
              "tfidf+lr uni+bi C=10": ({"sublinear_tf": True, "ngram_range": (1, 2)}, 10.0),
              "tfidf+lr uni+bi C=10 raw tf": ({"ngram_range": (1, 2)}, 10.0)}
LINEAR = (*TFIDF_ROWS, "linear over our features")
MODELS = {"default": "default", "bag": "bag of n-grams alone", "recurrent": "recurrent alone",
          "tfidf_uni": "tfidf+lr uni", "tfidf_bi": "tfidf+lr uni+bi C=10",
          "tfidf_bi_raw": "tfidf+lr uni+bi C=10 raw tf", "ours_linear": "linear over our features"}


def load_set(name):
    from kerasllm.data import default_classification_data, read_table, stratified_split

    if name == "topics":
        return stratified_split(*default_classification_data(), test_size=0.2, seed=0)
    if name == "passages":
        return shakespeare_passages()
    if name == "trec":
        if not (DATA / "trec6_train.tsv").is_file():
            return None
        return (*read_table(DATA / "trec6_train.tsv", "text", "label"), *read_table(DATA / "trec6_test.tsv", "text", "label"))
    path = DATA / {"cr": "cr.tsv", "subj": "subj.tsv", "sms": "sms_spam.tsv"}[name]
    if not path.is_file():
        return None
    return load_file(path)


def load_file(path):
    from kerasllm.data import read_table, stratified_split

    return stratified_split(*read_table(path, "text", "label"), test_size=0.2, seed=0)


def shakespeare_passages(words_per_passage=250, parts=10):
    """Long documents: 250-word passages of tiny Shakespeare labelled by the tenth of the file they
    come from (its plays and speakers); in each tenth the passages in its first 80% train, the rest test."""
    path = DATA / "tinyshakespeare.txt"
    if not path.is_file():
        return None
    words = path.read_text(encoding="utf-8").split()
    size = len(words) // parts
    train, train_labels, test, test_labels = [], [], [], []
    for part in range(parts):
        chunk = words[part * size:(part + 1) * size]
        cut = int(0.8 * len(chunk))
        for start in range(0, len(chunk) - words_per_passage, words_per_passage):
            texts, labels = (train, train_labels) if start + words_per_passage <= cut else (test, test_labels)
            texts.append(" ".join(chunk[start:start + words_per_passage]))
            labels.append(f"tenth {part + 1}")
    return train, train_labels, test, test_labels


def linear_rows(train, train_labels, test, test_labels, wanted):
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    out = {}
    y = np.array(test_labels)
    for name, (vectorizer, c) in TFIDF_ROWS.items():
        if name in wanted:
            v = TfidfVectorizer(**vectorizer)
            lr = LogisticRegression(C=c, max_iter=3000).fit(v.fit_transform(train), train_labels)
            out[name] = float(np.mean(lr.predict(v.transform(test)) == y))
    if "linear over our features" in wanted:
        x_train, x_test = our_features(train, test)
        lr = LogisticRegression(max_iter=3000).fit(x_train, train_labels)
        out["linear over our features"] = float(np.mean(lr.predict(x_test) == y))
    return out


def our_features(train, test):
    """The default model's bag features, computed by its own code: word, character n-gram and
    hashed-bigram ids from its tokenizer, idf-weighted and L2-normalised (``bag_features``)."""
    import numpy as np

    from kerasllm.models.classifier import ClassifierConfig, ClassifierParts, bag_features, default_max_length, idf_weights
    from kerasllm.text.word import WordTokenizer

    cfg = ClassifierConfig()
    max_length = default_max_length(train)
    tok = WordTokenizer(max_length=max_length, char_ngrams=cfg.char_ngrams).fit(
        train, max_tokens=cfg.vocab_size, max_char_tokens=cfg.char_vocab_size)
    cfg.max_length, cfg.vocab_size, cfg.char_vocab_size = max_length, tok.vocab_size, len(tok.char_vocabulary)
    cfg.max_char_grams = tok.max_char_grams
    parts = ClassifierParts(cfg, 2)
    train_grams = parts.ngram_ids(tok.encode(train)).numpy()
    idf = idf_weights(train_grams, parts.bag_size)
    return bag_features(train_grams, idf), bag_features(parts.ngram_ids(tok.encode(test)).numpy(), idf)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS + OPTIONAL_SETS)
    parser.add_argument("--tsv", nargs="+", default=[], metavar="NAME=PATH",
                        help="more sets: a labelled .tsv/.csv/.jsonl file each (read_table's formats; "
                             "stratified 80/20, seed 0), e.g. the files benchmarks/offline_sets.py writes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--set-option", nargs="*", default=[], metavar="NAME=VALUE",
                        help="extra TextClassifier settings for the neural rows (experiments)")
    parser.add_argument("--train-spans", type=int, default=0, metavar="N",
                        help="train on each training text plus N random spans of it (log-uniform lengths), test on "
                             "the whole test texts: a model trained on phrases and asked about sentences, as SST is")
    parser.add_argument("--logs", nargs="+", metavar="FILE",
                        help="no training: print the summary of earlier runs' printed rows (e.g. one run per seed)")
    args = parser.parse_args()
    if args.logs:
        return summarise(parse_logs(args.logs), args.sets, sorted({s for f in args.logs for s in _seeds(f)}),
                         [MODELS[m] for m in args.models], {})
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
    files = dict(item.split("=", 1) for item in args.tsv)
    for name in list(args.sets) + list(files):
        data = load_file(files[name]) if name in files else load_set(name)
        if data is None:
            print(f"{name}: data not found under {DATA}, skipped", flush=True)
            continue
        train, train_labels, test, test_labels = data
        if args.train_spans:
            train, train_labels = with_spans(train, train_labels, args.train_spans)
            from kerasllm.text.word import WordTokenizer

            # in the tokenizer's words, as max_length counts them (the default rule takes the 99th)
            lengths = WordTokenizer().lengths(train)
            print(f"{name}: {len(train)} training texts and spans, lengths p95 {np.percentile(lengths, 95):.0f}, "
                  f"p99 {np.percentile(lengths, 99):.0f}", flush=True)
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
                      f"{len(clf.history_.get('loss', []))} epochs, max_length {clf.config_.max_length}"
                      f"{_chosen(clf.history_)})", flush=True)

    summarise(results, list(args.sets) + list(files), args.seeds, wanted, extra)


def _chosen(history):
    """What the model chose on its own: the bag's C and scaling, the recurrent weight, their gains."""
    out = ""
    if "bag_c" in history:
        out += f", bag C {history['bag_c'][0]:.3g}"
    if "bag_nb" in history:
        out += f", nb scaling {history['bag_nb'][0]:.0f}"
    if "bag_sublinear" in history:
        out += f", sublinear tf {history['bag_sublinear'][0]:.0f}"
    if "bag_choice_gain_se" in history:
        out += f" (gain {history['bag_choice_gain_se'][0]:.2f} SE)"
    if "recurrent_weight" in history:
        out += f", recurrent weight {history['recurrent_weight'][0]:.3g}"
    if "recurrent_gain_se" in history:
        out += f" (gain {history['recurrent_gain_se'][0]:.2f} SE)"
    return out


def with_spans(texts, labels, n, seed=0):
    """Each text, then ``n`` random runs of its whitespace-separated words with its label, their
    lengths log-uniform between 1 and the text's length (short phrases are the most common)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out, out_labels = [], []
    for text, label in zip(texts, labels):
        words = text.split()
        out.append(text)
        out_labels.append(label)
        for _ in range(n):
            size = int(min(len(words), np.ceil(np.exp(rng.uniform(0, np.log(max(len(words), 1)))))))
            start = int(rng.integers(0, len(words) - size + 1))
            out.append(" ".join(words[start:start + size]))
            out_labels.append(label)
    return out, out_labels


def _seeds(path):
    import re

    return {int(m) for m in re.findall(r" seed (\d+) ", Path(path).read_text())}


def parse_logs(paths):
    """(set, model) -> accuracies, from the rows this script prints as it goes."""
    import re

    results = {}
    row = re.compile(r"^(\w+)\s+(.+?)\s+(?:seed (\d+) )?(\d\.\d{4})(?:\s|$)")
    for path in paths:
        for line in Path(path).read_text().splitlines():
            m = row.match(line)
            if m and m.group(2).strip() in NEURAL or (m and m.group(2).strip() in LINEAR):
                name, model, seed, accuracy = m.group(1), m.group(2).strip(), m.group(3), float(m.group(4))
                if seed is None and (name, model) in results:
                    continue  # deterministic rows: once
                results.setdefault((name, model), []).append(accuracy)
    return results


def summarise(results, sets, seeds, wanted, extra):
    import numpy as np

    sets = [s for s in sets if any(k[0] == s for k in results)]
    print(f"\naccuracy on the test split; neural rows: mean (max-min) over seeds {seeds}"
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
    if means.get("default") and len(means.get("tfidf+lr uni+bi C=10", [])) == len(means["default"]) == len(sets):
        diff = np.array(means["default"]) - np.array(means["tfidf+lr uni+bi C=10"])
        print(f"\ndefault - tfidf+lr uni+bi C=10: mean {diff.mean() * 100:+.2f} points; per set "
              + ", ".join(f"{s} {d * 100:+.2f}" for s, d in zip(sets, diff)))
    if means.get("default") and len(means.get("bag of n-grams alone", [])) == len(means["default"]) == len(sets):
        wins = sum(a > b for a, b in zip(means["default"], means["bag of n-grams alone"]))
        print(f"default beats its bag of n-grams path alone on {wins} of {len(sets)} sets")
    if len(means.get("recurrent alone", [])) == len(means.get("tfidf+lr uni", [])) == len(sets):
        for s, a, b in zip(sets, means["recurrent alone"], means["tfidf+lr uni"]):
            print(f"recurrent alone vs tfidf+lr uni on {s}: {a:.4f} vs {b:.4f}")


if __name__ == "__main__":
    main()
