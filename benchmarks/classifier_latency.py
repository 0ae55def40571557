"""Classifier latency: one trained model, five inference paths, measured in one run.

End to end from a Python string to a label: ``model.predict``, a direct Keras call, the XLA
SavedModel signature, and the TFLite runtime (float and dynamic-range int8), each for one text
(p50/p99 over many calls, paths interleaved in rounds) and for a batch of 256 texts.

    python benchmarks/classifier_latency.py            # pinned to core 0 (--core N), one thread
    python benchmarks/classifier_latency.py --no-pin

Trains the default classifier on the SMS Spam Collection (../shared/data) when present, else on
the built-in documentation topics.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
              ROOT.parent / "shared" / "data") / "sms_spam.tsv"


def pin(core):
    """One core, one thread: numbers then do not depend on what the other core is doing."""
    if core < 0:
        return "not pinned"
    os.environ["OMP_NUM_THREADS"] = "1"
    os.sched_setaffinity(0, {core})
    return f"pinned to core {core}, 1 intra-op / 1 inter-op thread, OMP_NUM_THREADS=1"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--core", type=int, default=0, help="CPU core to pin to (default 0)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per path")
    args = parser.parse_args()
    settings = pin(-1 if args.no_pin else args.core)

    import numpy as np

    sys.path.insert(0, str(ROOT))
    import kerasllm
    import tasks
    from kerasllm._tf import tf
    from kerasllm.data import default_classification_data, read_table, stratified_split

    if not args.no_pin:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    if SHARED.is_file():
        data_name, (texts, labels) = "SMS Spam Collection", read_table(SHARED, "text", "label")
    else:
        data_name, (texts, labels) = "Python documentation topics", default_classification_data()
    train, train_labels, test, test_labels = stratified_split(texts, labels, 0.2, 0)
    print(f"training the default classifier on {data_name} ({len(train)} texts) ...", flush=True)
    clf = tasks.train_classifier(train, train_labels, seed=0)
    accuracy = clf.evaluate(test, test_labels)["accuracy"]

    root = Path(tempfile.mkdtemp(prefix="kerasllm-bench-"))
    tasks.export(clf, root / "float")
    tasks.export(clf, root / "dynamic", formats=("tflite",), quantization="dynamic")
    tflite_float = kerasllm.load(root / "float")
    tflite_dynamic = kerasllm.load(root / "dynamic")
    saved_model = kerasllm.load(root / "float", prefer="saved_model")
    raw = None
    if clf.config_.bag_sublinear:
        # what counting each n-gram's repeats (the sublinear term frequency the default chose) costs:
        # the same settings with bag_tf="raw", its TFLite file timed in the same rounds
        raw_clf = tasks.train_classifier(train, train_labels, seed=0, bag_tf="raw")
        tasks.export(raw_clf, root / "raw_tf", formats=("tflite",))
        raw = (kerasllm.load(root / "raw_tf"), raw_clf)
    classes = clf.classes
    model = clf.model

    def keras_predict(batch):
        return [classes[i] for i in model.predict(clf.tokenizer.encode(batch), verbose=0).argmax(axis=1)]

    def keras_call(batch):
        return [classes[i] for i in model(clf.tokenizer.encode(batch), training=False).numpy().argmax(axis=1)]

    paths = {
        "model.predict": (keras_predict, 15),
        "Keras direct call (eager)": (keras_call, 30),
        "TextClassifier.predict": (clf.predict, 200),
        "SavedModel (XLA) signature": (saved_model.predict, 200),
        "TFLite float (kerasllm.load)": (tflite_float.predict, 2000),
        "TFLite dynamic int8": (tflite_dynamic.predict, 2000),
    }
    if raw is not None:
        paths["TFLite float, bag_tf='raw'"] = (raw[0].predict, 2000)
    one = {name: [] for name in paths}
    batch_times = {name: [] for name in paths}
    batch = test[:256]
    for name, (fn, _) in paths.items():  # warm up: XLA compiles, TFLite allocates
        fn(test[:1]), fn(batch)
        reference = raw[1] if name.endswith("'raw'") else clf
        assert fn(test[:20]) == reference.predict(test[:20]) or name.startswith("TFLite dynamic"), name
    for _ in range(args.rounds):
        for name, (fn, calls) in paths.items():
            for i in range(calls // args.rounds):
                text = [test[i % len(test)]]
                t0 = time.perf_counter()
                fn(text)
                one[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fn(batch)
            batch_times[name].append(time.perf_counter() - t0)

    base = np.median(one["model.predict"])
    print(f"\nclassifier latency, end to end from Python strings to labels ({data_name}, "
          f"test accuracy {accuracy:.4f}, max_length {clf.config.max_length}, bag term frequency "
          f"{'sublinear' if clf.config_.bag_sublinear else 'raw'}); {settings}; "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'path':<30} {'p50 one text':>13} {'p99 one text':>13} {'vs predict':>11} {'256 texts/s':>12}")
    for name in paths:
        p50, p99 = np.median(one[name]), np.percentile(one[name], 99)
        rate = len(batch) / np.median(batch_times[name])
        print(f"{name:<30} {p50 * 1e6:>10.1f} µs {p99 * 1e6:>10.1f} µs {base / p50:>10.0f}x {rate:>12.0f}")
    # Where one text's time goes in the TFLite float predictor (its internals, the same calls
    # predict makes): tokenizing, then writing the ids and running the bucket's interpreter.
    tokenize, invoke = [], []
    state = tflite_float._state()
    for _ in range(3):
        for text in test[:400]:
            t0 = time.perf_counter()
            words, grams = tflite_float.tokenizer.ids_one(text)
            t1 = time.perf_counter()
            tflite_float._run_one(words, grams, tflite_float._bucket(words, grams), state)
            t2 = time.perf_counter()
            tokenize.append(t1 - t0), invoke.append(t2 - t1)
    total = np.median(one["TFLite float (kerasllm.load)"])
    print(f"{'  TFLite float by stage':<30} tokenize p50 {np.median(tokenize) * 1e6:.1f} µs, write ids + invoke "
          f"p50 {np.median(invoke) * 1e6:.1f} µs, the rest (checks, bucket, label) "
          f"~{(total - np.median(tokenize) - np.median(invoke)) * 1e6:.1f} µs")
    # Long texts: one text of n words (words drawn from the test texts) through the TFLite runtime.
    rng = np.random.default_rng(0)
    vocabulary = " ".join(test).split()
    print(f"\nTFLite float, one text of n words (max_length {clf.config.max_length}: longer texts are cut there)")
    print(f"{'words':>6} {'p50 µs/text':>12} {'batch of 64: µs/text':>21}")
    for n in (16, 64, 256):
        texts = [" ".join(rng.choice(vocabulary, n)) for _ in range(64)]
        tflite_float.predict(texts)
        singles = []
        for _ in range(3):
            for t in texts:
                t0 = time.perf_counter()
                tflite_float.predict([t])
                singles.append(time.perf_counter() - t0)
        batch = []
        for _ in range(5):
            t0 = time.perf_counter()
            tflite_float.predict(texts)
            batch.append((time.perf_counter() - t0) / len(texts))
        print(f"{n:>6} {np.median(singles) * 1e6:>12.1f} {np.median(batch) * 1e6:>21.1f}")
    # Small batches run the length buckets too: two texts vs two one-text calls, taking turns at
    # going first (whichever runs second finds the same texts' signatures warm in the caches).
    pair_times, two_single = [], []

    def one_call(pair):
        t0 = time.perf_counter()
        tflite_float.predict(pair)
        pair_times.append(time.perf_counter() - t0)

    def two_calls(pair):
        t0 = time.perf_counter()
        tflite_float.predict(pair[:1]), tflite_float.predict(pair[1:])
        two_single.append(time.perf_counter() - t0)

    for i in range(2000):
        pair = [test[i % len(test)], test[(i + 1) % len(test)]]
        for run in ((one_call, two_calls) if i % 2 else (two_calls, one_call)):
            run(pair)
    print(f"\ntwo SMS texts in one call: p50 {np.median(pair_times) * 1e6:.1f} µs; "
          f"two one-text calls: p50 {np.median(two_single) * 1e6:.1f} µs")
    import ai_edge_litert
    import tf_keras

    print(f"\ntensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, "
          f"ai-edge-litert {getattr(ai_edge_litert, '__version__', '?')}")
    sizes = {p.parent.parent.name: p.stat().st_size for p in root.glob("*/1/model.tflite")}
    print("tflite bytes: " + ", ".join(f"{k} {v:,}" for k, v in sorted(sizes.items())))


if __name__ == "__main__":
    main()
