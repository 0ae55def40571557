"""Classifier quality: the default model, the plain SimpleRNN (bag_of_ngrams=False) and TF-IDF +
logistic regression on the same splits, in one run.

Data: the built-in documentation topics (every topic with at least 25 paragraphs, a harder
many-class set) and, when ../shared/data is present, the SMS Spam Collection (standard
stratified 80/20 split, seed 0) over several training seeds.

    python benchmarks/classifier_quality.py [--seeds 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMS = ROOT.parent / "shared" / "data" / "sms_spam.tsv"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    import tasks
    from kerasllm.data import default_documents, read_table, stratified_split

    texts, labels = default_documents()
    counts = Counter(labels)
    keep = [i for i, label in enumerate(labels) if counts[label] >= 25]
    sets = {"documentation topics (>= 25 paragraphs each)": ([texts[i] for i in keep], [labels[i] for i in keep])}
    if SMS.is_file():
        sets["SMS Spam Collection"] = read_table(SMS, "text", "label")

    rows = []
    for name, (x, y) in sets.items():
        train, train_labels, test, test_labels = stratified_split(x, y, 0.2, 0)
        vectorizer = TfidfVectorizer()
        baseline = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train), train_labels)
        predicted = baseline.predict(vectorizer.transform(test))
        rows.append((name, len(set(y)), "TF-IDF + logistic regression", "-",
                     np.mean(predicted == np.array(test_labels)), f1_score(test_labels, predicted, average="macro")))
        for variant, options in (("kerasllm default", {}), ("plain SimpleRNN", {"bag_of_ngrams": False})):
            for seed in args.seeds:
                m = tasks.train_classifier(train, train_labels, seed=seed, **options).evaluate(test, test_labels)
                rows.append((name, len(set(y)), variant, seed, m["accuracy"], m["macro_f1"]))
                print(rows[-1], flush=True)

    print(f"\n{'data':<46} {'classes':>7}  {'model':<30} {'seed':>4} {'accuracy':>9} {'macro-F1':>9}")
    for name, n, variant, seed, accuracy, f1 in rows:
        print(f"{name:<46} {n:>7}  {variant:<30} {seed!s:>4} {accuracy:>9.4f} {f1:>9.4f}")


if __name__ == "__main__":
    main()
