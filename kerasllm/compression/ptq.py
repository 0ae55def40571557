"""Conversion of a classifier variant to TFLite: one mode, no fallback, crash isolation, smoke test.

The converter is native code: a quantization mode it cannot handle may raise, or may abort the
process. Conversions therefore run in a child Python process (``python -m
kerasllm.compression.ptq JOB``) unless the caller opts out. A mode that fails is reported as a
failed variant (``ConversionFailed``); nothing is silently replaced by another mode. Only the
converter's own error, a crashed/timed-out child and a failed smoke test count as a failed
conversion; any other exception is a bug in this project and propagates.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from kerasllm.export.layout import write_bytes_atomic

MODES = (None, "dynamic", "float16", "int8", "16x8")
MODEL_FILE = "model.h5"
QAT_WEIGHTS = "qat_weights.npz"
CHILD_FAILED = 3  # the child's exit code for a converter error or a failed smoke test (not a bug)
# the smoke test: the converted model must agree with the Keras model it came from on real texts
MIN_AGREEMENT = 0.8


class ConversionFailed(RuntimeError):
    """The converter rejected or crashed on a model, or its output fails the smoke test."""


def mode_name(mode):
    return "float32" if mode is None else mode


def convert(clf, quantization, representative_texts=None, buckets=None, model=None, qat=False, isolate=True,
            timeout=900):
    """TFLite bytes of ``clf`` (or of ``model``, a Keras model with the classifier's input; or with
    ``qat=True`` of ``clf.qat_model``, the quantization-aware graph with its trained ranges).

    Returns ``(flatbuffer, notes)`` (``notes``: what the smoke test measured). Raises
    ``ConversionFailed`` when the conversion fails; there is no fallback to another mode.
    """
    if quantization not in MODES:
        raise ValueError(f"quantization must be one of {list(MODES)}, got {quantization!r}")
    if isolate:
        return convert_in_subprocess(clf, quantization, representative_texts, buckets, model, qat, timeout)
    return convert_here(clf, quantization, representative_texts, buckets, model, qat)


def converter_errors():
    """The exception types that mean "the converter could not convert this model"."""
    from kerasllm._tf import tf  # noqa: F401  (TensorFlow first, through the one place that imports it)
    from tensorflow.lite.python.convert_phase import ConverterError

    return (ConverterError, ConversionFailed)


def raised_by_converter(error):
    """True when ``error`` was raised inside TensorFlow Lite's converter or the LiteRT runtime
    (e.g. a calibration RuntimeError), not in this project's code."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename.replace(os.sep, "/") if tb is not None else ""
    return any(part in where for part in ("/tensorflow/lite/", "/ai_edge_litert/", "/tensorflow/compiler/mlir/"))


def converting(mode):
    """Context manager: converter errors inside become ``ConversionFailed``; anything else propagates."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except ConversionFailed:
            raise
        except converter_errors() as e:
            raise ConversionFailed(f"{mode_name(mode)} conversion failed: {_short(e)}") from e
        except Exception as e:
            if not raised_by_converter(e):
                raise  # a bug in kerasllm: not a failed conversion
            raise ConversionFailed(f"{mode_name(mode)} conversion failed in TensorFlow Lite: "
                                   f"{type(e).__name__}: {_short(e)}") from e

    return guard()


def convert_here(clf, mode, representative_texts=None, buckets=None, model=None, qat=False):
    from kerasllm.export.classifier import tflite_bytes
    from kerasllm.export.flatbuffer import compact

    with converting(mode):
        if qat:
            from kerasllm.compression.qat import qat_tflite_bytes

            flatbuffer = compact(qat_tflite_bytes(clf))
        else:
            flatbuffer = compact(tflite_bytes(clf, mode, representative_texts, model=model, buckets=buckets))
        reference = clf.qat_model if qat else model if model is not None else clf.model
        return flatbuffer, smoke_test(clf, flatbuffer, mode, representative_texts, buckets, model, reference)


def smoke_test(clf, flatbuffer, mode, texts, buckets=None, model=None, reference=None):
    """Run the converted model through the classifier runtime on an empty text, one text and a
    batch of real texts, and compare its predictions with ``reference`` (the Keras model it was
    converted from): a converter can produce a model that runs but computes something else
    (e.g. an int8 divide by a value that rounded to zero). Raises ``ConversionFailed``."""
    from kerasllm.export.classifier import write_tflite
    from kerasllm.runtime.classifier import TFLiteClassifier

    sample = list(texts or [])[:300]
    if not sample:
        raise ValueError("the smoke test needs real texts (representative_texts)")
    with tempfile.TemporaryDirectory(prefix="kerasllm-smoke-") as tmp:
        write_tflite(clf, tmp, mode, model=model, buckets=buckets, flatbuffer=flatbuffer)
        runtime = TFLiteClassifier(Path(tmp) / "model.tflite")
        got = runtime.predict_proba(sample)
        for probs in (runtime.predict_proba([""]), runtime.predict_proba(sample[:1]), got):
            if not np.all(np.isfinite(probs)):
                raise ConversionFailed(f"the {mode_name(mode)} model gives non-finite probabilities")
    want = (reference or clf.model).predict(clf.tokenizer.encode(sample), batch_size=256, verbose=0)
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
    gap = float(np.abs(got - want).max())
    if agreement < MIN_AGREEMENT:
        raise ConversionFailed(f"the {mode_name(mode)} model agrees with its Keras model on only "
                               f"{100 * agreement:.1f}% of {len(sample)} texts (smoke test needs "
                               f"{100 * MIN_AGREEMENT:.0f}%)")
    return [f"smoke test: same label as its Keras model on {100 * agreement:.1f}% of {len(sample)} training "
            f"texts, max |probability difference| {gap:.3f}"]


def convert_in_subprocess(clf, mode, representative_texts=None, buckets=None, model=None, qat=False, timeout=900):
    """``convert_here`` in a child process: a converter abort cannot take the caller down."""
    with tempfile.TemporaryDirectory(prefix="kerasllm-convert-") as tmp:
        tmp = Path(tmp)
        # the classifier with the variant's config and weights; a foreign model travels as a whole .h5,
        # a QAT graph as its weights (quantizer ranges included), rebuilt in the child
        clf.save(tmp / "classifier")
        job = {"classifier": str(tmp / "classifier"), "mode": mode, "buckets": buckets,
               "representative_texts": list(representative_texts or [])[:300], "model": None, "qat": None}
        if model is not None:
            model.save(str(tmp / MODEL_FILE))
            job["model"] = str(tmp / MODEL_FILE)
        if qat:
            from kerasllm.compression.qat import layer_weights

            weights = layer_weights(clf.qat_model)
            np.savez(tmp / QAT_WEIGHTS, *weights.values())
            job["qat"], job["qat_keys"] = str(tmp / QAT_WEIGHTS), list(weights)
        result = run_child("kerasllm.compression.ptq", job, tmp, timeout)
        return result["flatbuffer"], result["notes"]


def run_child(module, job, tmp, timeout=900):
    """Run ``python -m module JOB`` (whose ``_main`` goes through ``child_main``); returns
    {"flatbuffer": bytes, "notes": [...]}. A crash, a timeout or a converter error in the child
    raises ``ConversionFailed``; any other exception in the child (a bug) raises RuntimeError."""
    tmp = Path(tmp)
    job = dict(job, output=str(tmp / "out.tflite"), result=str(tmp / "result.json"))
    (tmp / "job.json").write_text(json.dumps(job), encoding="utf-8")
    env = dict(os.environ)
    # the child imports the same kerasllm as this process
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        done = subprocess.run([sys.executable, "-m", module, str(tmp / "job.json")],
                              env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConversionFailed(f"the converter did not finish within {timeout} s") from None
    result = json.loads(Path(job["result"]).read_text(encoding="utf-8")) if Path(job["result"]).exists() else {}
    if done.returncode == 0 and Path(job["output"]).exists():
        return {"flatbuffer": Path(job["output"]).read_bytes(), "notes": result.get("notes", [])}
    if done.returncode == CHILD_FAILED:
        raise ConversionFailed(result.get("error") or _last_error(done.stderr))
    if done.returncode < 0:
        raise ConversionFailed(f"converter process killed by signal {-done.returncode}: {_last_error(done.stderr)}")
    raise RuntimeError(f"the conversion child process hit a bug (exit code {done.returncode}):\n"
                       + "\n".join(done.stderr.strip().splitlines()[-15:]))


def child_main(job_path, work):
    """The child's side of ``run_child``: ``work(job)`` returns (flatbuffer, notes)."""
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    try:
        flatbuffer, notes = work(job)
    except ConversionFailed as e:
        Path(job["result"]).write_text(json.dumps({"error": _short(e)}), encoding="utf-8")
        sys.exit(CHILD_FAILED)
    Path(job["result"]).write_text(json.dumps({"notes": notes}), encoding="utf-8")
    write_bytes_atomic(job["output"], flatbuffer)


def _last_error(stderr):
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if "Error" in l or "error:" in l]
    return (errors or lines or ["no output"])[-1][:300]


def _short(error):
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def _convert_job(job):
    from kerasllm.models.classifier import TextClassifier

    clf = TextClassifier.load(job["classifier"])
    model = None
    if job["model"]:
        from kerasllm._tf import keras
        from kerasllm.models.classifier_layers import HashedBigrams, MaskedMean

        model = keras.models.load_model(job["model"], compile=False,
                                        custom_objects={"HashedBigrams": HashedBigrams, "MaskedMean": MaskedMean})
    if job["qat"]:
        from kerasllm.compression.qat import attach_qat_model

        with np.load(job["qat"]) as saved:
            attach_qat_model(clf, {key: saved[f"arr_{i}"] for i, key in enumerate(job["qat_keys"])})
    return convert_here(clf, job["mode"], job["representative_texts"], job["buckets"], model, qat=bool(job["qat"]))


if __name__ == "__main__":
    child_main(sys.argv[1], _convert_job)
