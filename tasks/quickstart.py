"""The main job: the whole product on built-in real text (Python's own documentation), no download."""
from __future__ import annotations

import time
from pathlib import Path


def quickstart(out="saved_models", data=None, text_column="text", label_column="label", seed=0):
    """Train a classifier, export it (SavedModel + TFLite), load the export and query it.

    ``data``: a labelled .csv/.tsv/.jsonl file to use instead of the built-in documentation topics.
    Returns a dict of what was made and measured.
    """
    import kerasllm
    import tasks
    from kerasllm.cli import print_metrics
    from kerasllm.data import default_classification_data, read_table, stratified_split

    start = time.time()
    if data:
        texts, labels = read_table(data, text_column, label_column)
        name = Path(data).stem
    else:
        texts, labels = default_classification_data()
        name = "python-docs-topics"
    train, train_labels, test, test_labels = stratified_split(texts, labels, 0.2, seed)
    print(f"[1/3] training the classifier on {len(train)} texts ({len(set(labels))} classes: "
          f"{', '.join(sorted(set(labels)))})", flush=True)
    clf = tasks.train_classifier(train, train_labels, seed=seed, verbose=2)
    metrics = clf.evaluate(test, test_labels)
    print_metrics(metrics)

    print(f"\n[2/3] exporting to {out}/{name} (XLA SavedModel for TF Serving + TFLite)", flush=True)
    paths = tasks.export(clf, Path(out) / name)
    print(f"      wrote {paths['version_dir']}")

    print("\n[3/3] answering from the TFLite export", flush=True)
    predictor = kerasllm.load(Path(out) / name)
    for text in test[:3]:
        label = predictor.predict([text])[0]
        print(f"      {label:<16} <- {text[:70]!r}")
    t0 = time.perf_counter()
    for text in test[:200]:
        predictor.predict([text])
    per_text_us = (time.perf_counter() - t0) / min(200, len(test)) * 1e6
    print(f"      {per_text_us:.0f} µs per text, end to end from a Python string")
    print(f"\ndone in {time.time() - start:.0f} s. Serve it with TF Serving from {out}/, or in Python:\n"
          f"    import kerasllm\n    kerasllm.load({str(Path(out) / name)!r}).predict([\"your text\"])")
    return {"classifier": clf, "metrics": metrics, "export": paths, "latency_us": per_text_us}
