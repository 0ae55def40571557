"""Compress a trained ``TextClassifier`` every requested way and measure each variant the same way:
TFLite bytes, gzip bytes, accuracy/macro-F1 with a bootstrap interval of the drop, and single-text
p50 latency, all through the TFLite runtime users deploy.

The validation set is split in two stratified halves: ``best()`` chooses on the *selection* half,
the report's quality columns and intervals come from the *test* half, so the figures shown are
not the ones the choice was tuned on. A method that fails (the converter rejects or crashes on
it, its smoke test fails, or it does not apply to the model) is a failed row with the reason,
and a warning; it is never replaced by another mode.
"""
from __future__ import annotations

import time
import warnings

import numpy as np

from kerasllm.compression import DEFAULT_METHODS, parse_methods
from kerasllm.compression.ptq import ConversionFailed, convert, mode_name
from kerasllm.compression.report import CompressionReport, bootstrap_drop, classification_scores, failed_row
from kerasllm.compression.variant import ClassifierVariant

TRAINING_STEPS = ("prune", "qat", "distill")
METRICS = ("accuracy", "macro_f1")


def compress_classifier(model, train_texts, train_labels=None, validation=None, methods=DEFAULT_METHODS,
                        sparsity=0.8, pruning="units", prune_epochs=3, qat_epochs=2, distill_epochs=8,
                        temperature=2.0, alpha=0.5, student=None, representative_size=300, latency_runs=200,
                        isolate=True, bootstrap=1000, seed=0, verbose=False):
    """``tasks.compress`` for a classifier; see ``kerasllm.compression.compress``.

    Quantized variants (ptq_*, qat) are converted with a single full-length signature: with
    full-integer quantization the converter calibrates each length bucket separately and
    stores a separate int8 copy of the tables for the full-length one, which would undo most of
    the saving. Float variants keep the runtime's length buckets. ``isolate``: convert in a child
    process (a converter crash becomes a failed row instead of ending this process).
    """
    from kerasllm.compression.prune import MethodUnsupported
    from kerasllm.data import shuffled
    from kerasllm.models.classifier import check_labels
    from kerasllm.export.classifier import length_buckets
    from kerasllm.text.word import check_texts

    if getattr(model, "model", None) is None or getattr(model, "tokenizer", None) is None:
        raise TypeError("model must be a trained kerasllm TextClassifier (call fit first, or load one)")
    plans = parse_methods(methods)
    train_texts = check_texts(train_texts, "train_texts")
    needs_labels = sorted({s for steps in plans for s in steps if s in ("prune", "qat")})
    if train_labels is None and needs_labels:
        raise ValueError(f"train_labels are required for {needs_labels} (distill and ptq_* work without them)")
    if train_labels is not None:
        train_labels = check_labels(train_labels, len(train_texts), "train_labels")
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise ValueError("validation must be (texts, labels) for a classifier")
    val_texts = check_texts(validation[0], "validation texts")
    val_labels = check_labels(validation[1], len(val_texts), "validation labels")
    if len(val_texts) < 4:
        raise ValueError(f"validation holds {len(val_texts)} texts; at least 4 are needed (it is split in a "
                         "selection half for best() and a test half for the report)")
    test_texts, test_labels, select_texts, select_labels = halves(val_texts, val_labels, seed)
    index = {label: i for i, label in enumerate(model.classes)}
    unknown = sorted(set(val_labels) - set(index), key=repr)
    if unknown:
        raise ValueError(f"validation labels {unknown[:5]} are not the model's labels {model.classes}")
    y_test = np.array([index[l] for l in test_labels])
    y_select = np.array([index[l] for l in select_labels])
    representative = shuffled(train_texts, seed)[:representative_size]
    full = length_buckets(model.config)[-1:]

    def log(message):
        if verbose:
            print(f"[compress] {message}", flush=True)

    trained = {(): (model, {})}  # steps so far -> (classifier, info of the last step)

    def train(steps):
        if steps in trained:
            return trained[steps]
        previous, _ = train(steps[:-1])
        step = steps[-1]
        log(f"training {'+'.join(steps)}")
        if step == "prune":
            from kerasllm.compression.prune import prune_classifier

            result = prune_classifier(previous, train_texts, train_labels, sparsity=sparsity, epochs=prune_epochs,
                                      pruning=pruning, seed=seed)
        elif step == "qat":
            from kerasllm.compression.qat import qat_classifier

            result = qat_classifier(previous, train_texts, train_labels, epochs=qat_epochs,
                                    keep_zeros="prune" in steps[:-1], seed=seed)
        else:
            from kerasllm.compression.distill import distill_classifier

            result = distill_classifier(previous, train_texts, train_labels, temperature=temperature, alpha=alpha,
                                        epochs=distill_epochs, student=student, seed=seed)
        trained[steps] = result
        return result

    plans = [()] + [p for p in plans if p]
    rows, variants, details, predictions = [], {}, {}, {}
    for steps in plans:
        name = "+".join(steps) or "float"
        if name in variants or any(r["name"] == name for r in rows):
            continue
        quant = next((s for s in steps if s == "qat" or s.startswith("ptq_")), None)
        mode = None if quant is None else "int8" if quant == "qat" else quant[len("ptq_"):]
        training = tuple(s for s in steps if s in TRAINING_STEPS)
        try:
            clf, _ = train(training)
            buckets = None if mode is None else full
            log(f"converting {name} ({'QAT graph' if quant == 'qat' else mode_name(mode)})")
            flatbuffer, notes = convert(clf, mode, representative, buckets=buckets, qat=quant == "qat",
                                        isolate=isolate)
        except (ConversionFailed, MethodUnsupported) as e:
            if not steps:
                raise RuntimeError(f"the float model itself does not convert: {e}") from e
            warnings.warn(f"compression method {name!r} failed: {e}", RuntimeWarning, stacklevel=2)
            log(f"{name}: FAILED ({e})")
            rows.append(failed_row(name, mode_name(mode), str(e)))
            continue
        info = {}
        for i in range(1, len(training) + 1):
            info.update(trained[training[:i]][1])
        variant = ClassifierVariant(name, clf, flatbuffer, mode, buckets, notes, info)
        row, predictions[name] = measure(variant, test_texts, y_test, select_texts, y_select, latency_runs)
        rows.append(row)
        variants[name] = variant
        if info:
            details[name] = info
        log(f"{name}: {row['tflite_bytes']} bytes, accuracy {row['accuracy']:.4f}")
    base = rows[0]
    for r in rows:
        if r["status"] != "ok":
            continue
        r["size_ratio"] = r["tflite_bytes"] / base["tflite_bytes"]
        r["gzip_ratio"] = r["gzip_bytes"] / base["gzip_bytes"]
        r["drops"] = {m: base[m] - r[m] for m in METRICS}
        r["selection_drops"] = {m: base["selection"][m] - r["selection"][m] for m in METRICS}
        r["drop_ci"] = {m: bootstrap_drop(y_test, predictions["float"], predictions[r["name"]], len(index), m,
                                          n=bootstrap, seed=seed) for m in METRICS}
        r["quality_drop"] = r["drops"]["accuracy"]
    return CompressionReport(rows, variants, quality="accuracy", higher_is_better=True, details=details,
                             title=f"a {model.config.architecture} text classifier")


def measure(variant, texts, y, select_texts, y_select, latency_runs=200):
    """A report row (sizes, test-half metrics, selection-half metrics, single-text p50 latency through
    the TFLite runtime) and the test-half predicted label indices."""
    runtime = variant.runtime()
    predicted = runtime.predict_proba(texts).argmax(1)
    selected = runtime.predict_proba(select_texts).argmax(1)
    n = len(variant.classes)
    sample = [texts[i % len(texts)] for i in range(max(1, latency_runs))]
    for text in sample[:10]:  # warm-up
        runtime.predict_proba([text])
    times = []
    for text in sample:
        start = time.perf_counter()
        runtime.predict_proba([text])
        times.append(time.perf_counter() - start)
    kind = mode_name(variant.quantization) + (" (QAT graph)" if "qat" in variant.name.split("+") else "")
    row = {"name": variant.name, "status": "ok", "quantization": kind,
           "tflite_bytes": variant.tflite_bytes, "gzip_bytes": variant.gzip_bytes,
           **classification_scores(y, predicted, n), "test_size": len(y),
           "selection": classification_scores(y_select, selected, n), "selection_size": len(y_select),
           "p50_ms": float(np.median(times) * 1000), "notes": variant.notes}
    return row, predicted


def halves(texts, labels, seed=0):
    """(test texts, labels, selection texts, labels): stratified halves, or plain random halves when
    a label has fewer than 2 texts (as the classifier's own early-stopping hold-out does)."""
    from collections import Counter

    from kerasllm.data import stratified_split

    if min(Counter(labels).values()) >= 2:
        return stratified_split(texts, labels, 0.5, seed)
    order = np.random.default_rng(seed).permutation(len(texts))
    a, b = order[: len(order) // 2], order[len(order) // 2:]
    return ([texts[i] for i in a], [labels[i] for i in a], [texts[i] for i in b], [labels[i] for i in b])
