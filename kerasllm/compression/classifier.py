"""Compress a trained ``TextClassifier`` every requested way and measure each variant the same way:
TFLite bytes, gzip bytes, accuracy/macro-F1 on the validation set and single-text p50 latency,
all through the TFLite runtime users deploy."""
from __future__ import annotations

import time

import numpy as np

from kerasllm.compression import DEFAULT_METHODS, parse_methods
from kerasllm.compression.ptq import RISKY, convert_with_fallback, mode_name
from kerasllm.compression.report import CompressionReport
from kerasllm.compression.variant import ClassifierVariant

TRAINING_STEPS = ("prune", "qat", "distill")


def compress_classifier(model, train_texts, train_labels=None, validation=None, methods=DEFAULT_METHODS,
                        sparsity=0.8, structured=False, prune_epochs=3, qat_epochs=2, distill_epochs=8,
                        temperature=2.0, alpha=0.5, student=None, representative_size=300, latency_runs=200,
                        isolate=RISKY, seed=0, verbose=False):
    """``tasks.compress`` for a classifier; see ``kerasllm.compression.compress``.

    Quantized variants (ptq_*, qat) are converted with a single full-length signature: with
    full-integer quantization the converter calibrates each length bucket separately and
    stores a separate int8 copy of the tables for the full-length one, which would undo most of
    the saving. Float variants keep the runtime's length buckets.
    """
    from kerasllm.data import check_labelled, shuffled
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
        train_texts, train_labels = check_labelled(train_texts, train_labels)
    if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
        raise ValueError("validation must be (texts, labels) for a classifier")
    val_texts, val_labels = check_labelled(*validation)
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
                                      structured=structured, seed=seed)
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
    rows, variants, details = [], {}, {}
    for steps in plans:
        name = "+".join(steps) or "float"
        if name in variants:
            continue
        training = tuple(s for s in steps if s in TRAINING_STEPS)
        clf, _ = train(training)
        quant = next((s for s in steps if s == "qat" or s.startswith("ptq_")), None)
        mode = None if quant is None else "int8" if quant == "qat" else quant[len("ptq_"):]
        buckets = None if mode is None else full
        log(f"converting {name} ({mode_name(mode)})")
        flatbuffer, used, notes = convert_with_fallback(clf, mode, representative, buckets=buckets, isolate=isolate)
        info = {}
        for i in range(1, len(training) + 1):
            info.update(trained[training[:i]][1])
        variant = ClassifierVariant(name, clf, flatbuffer, used, buckets, notes, info)
        rows.append(measure(variant, val_texts, val_labels, latency_runs))
        variants[name] = variant
        if info:
            details[name] = info
        log(f"{name}: {rows[-1]['tflite_bytes']} bytes, accuracy {rows[-1]['accuracy']:.4f}")
    for r in rows:
        r["size_ratio"] = r["tflite_bytes"] / rows[0]["tflite_bytes"]
        r["gzip_ratio"] = r["gzip_bytes"] / rows[0]["gzip_bytes"]
        r["quality_drop"] = rows[0]["accuracy"] - r["accuracy"]
    return CompressionReport(rows, variants, quality="accuracy", higher_is_better=True, details=details,
                             title=f"a {model.config.architecture} text classifier")


def measure(variant, texts, labels, latency_runs=200):
    """A report row: sizes, validation metrics and single-text p50 latency through the TFLite runtime."""
    metrics = variant.evaluate(texts, labels)
    runtime = variant.runtime()
    sample = [texts[i % len(texts)] for i in range(max(1, latency_runs))]
    for text in sample[:10]:  # warm-up
        runtime.predict_proba([text])
    times = []
    for text in sample:
        start = time.perf_counter()
        runtime.predict_proba([text])
        times.append(time.perf_counter() - start)
    return {"name": variant.name, "quantization": mode_name(variant.quantization),
            "tflite_bytes": variant.tflite_bytes, "gzip_bytes": variant.gzip_bytes,
            "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "p50_ms": float(np.median(times) * 1000), "notes": variant.notes}
