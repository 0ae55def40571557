"""Post-training quantization of a classifier to TFLite, with fallback and crash isolation.

The converter is native code: a quantization mode it cannot handle may raise, or may abort the
process. Risky modes therefore convert in a child Python process (``python -m
kerasllm.compression.ptq JOB``); if a mode fails, the next mode in ``FALLBACKS`` is tried and
the report says which mode was used and why the others failed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# requested mode -> modes tried in order (None: plain float32)
FALLBACKS = {
    "int8": ("int8", "dynamic", "float16", None),
    "16x8": ("16x8", "int8", "dynamic", "float16", None),
    "dynamic": ("dynamic", "float16", None),
    "float16": ("float16", None),
    None: (None,),
}
RISKY = ("int8", "16x8")  # converted in a child process
MODEL_FILE = "model.h5"


def mode_name(mode):
    return "float32" if mode is None else mode


def convert_with_fallback(clf, quantization, representative_texts=None, buckets=None, model=None, isolate=RISKY,
                          timeout=900):
    """TFLite bytes of ``clf`` (or of ``model``, a Keras model with the classifier's input).

    Returns ``(flatbuffer, mode_used, notes)``; ``notes`` lists each failed mode and its error.
    Raises RuntimeError only if every mode fails.
    """
    if quantization not in FALLBACKS:
        raise ValueError(f"quantization must be one of {list(FALLBACKS)}, got {quantization!r}")

    def convert(mode):
        if mode in isolate:
            return convert_in_subprocess(clf, mode, representative_texts, buckets, model, timeout)
        return convert_here(clf, mode, representative_texts, buckets, model)

    return first_working(quantization, convert)


def first_working(quantization, convert):
    """``convert(mode)`` for each mode in ``FALLBACKS[quantization]`` until one succeeds.

    Returns ``(flatbuffer, mode_used, notes)``; ``notes`` names each failed mode and its error.
    Raises RuntimeError only if every mode fails.
    """
    notes = []
    for mode in FALLBACKS[quantization]:
        try:
            flatbuffer = convert(mode)
        except Exception as e:  # noqa: BLE001 - any converter failure means: try the next mode
            notes.append(f"{mode_name(mode)} conversion failed ({_short(e)}); falling back")
            continue
        if mode != quantization:
            notes.append(f"used {mode_name(mode)} instead of {mode_name(quantization)}")
        return flatbuffer, mode, notes
    raise RuntimeError(f"every conversion failed for {mode_name(quantization)}: " + "; ".join(notes))


def convert_here(clf, mode, representative_texts=None, buckets=None, model=None):
    from kerasllm.export.classifier import tflite_bytes
    from kerasllm.export.flatbuffer import compact

    flatbuffer = compact(tflite_bytes(clf, mode, representative_texts, model=model, buckets=buckets))
    smoke_test(clf, flatbuffer, mode, representative_texts, buckets, model)
    return flatbuffer


def smoke_test(clf, flatbuffer, mode, texts, buckets=None, model=None):
    """Run the converted model through the classifier runtime on an empty text, one text and a
    batch: some quantized kernels only fail when invoked (e.g. an int8 divide by a value that
    rounded to zero). A failure here makes ``convert_with_fallback`` try the next mode."""
    from kerasllm.export.classifier import write_tflite
    from kerasllm.runtime.classifier import TFLiteClassifier

    with tempfile.TemporaryDirectory(prefix="kerasllm-smoke-") as tmp:
        write_tflite(clf, tmp, mode, model=model, buckets=buckets, flatbuffer=flatbuffer)
        runtime = TFLiteClassifier(Path(tmp) / "model.tflite")
        sample = list(texts or [])[:8] or ["a b c"]
        for probs in (runtime.predict_proba([""]), runtime.predict_proba(sample[:1]), runtime.predict_proba(sample)):
            if not np.all(np.isfinite(probs)):
                raise RuntimeError(f"the {mode_name(mode)} model gives non-finite probabilities")


def convert_in_subprocess(clf, mode, representative_texts=None, buckets=None, model=None, timeout=900):
    """``convert_here`` in a child process: a converter abort cannot take the caller down."""
    with tempfile.TemporaryDirectory(prefix="kerasllm-convert-") as tmp:
        tmp = Path(tmp)
        # the classifier with the variant's config and weights; a foreign model travels as a whole .h5
        clf.save(tmp / "classifier")
        job = {"classifier": str(tmp / "classifier"), "mode": mode, "buckets": buckets,
               "representative_texts": list(representative_texts or [])[:300], "output": str(tmp / "out.tflite"),
               "model": None}
        if model is not None:
            model.save(str(tmp / MODEL_FILE))
            job["model"] = str(tmp / MODEL_FILE)
        (tmp / "job.json").write_text(json.dumps(job), encoding="utf-8")
        env = dict(os.environ)
        # the child imports the same kerasllm as this process
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        try:
            done = subprocess.run([sys.executable, "-m", "kerasllm.compression.ptq", str(tmp / "job.json")],
                                  env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"the converter did not finish within {timeout} s") from None
        output = tmp / "out.tflite"
        if done.returncode != 0 or not output.exists():
            how = f"exit code {done.returncode}" if done.returncode >= 0 else f"killed by signal {-done.returncode}"
            raise RuntimeError(f"converter process failed ({how}): {_last_error(done.stderr)}")
        return output.read_bytes()


def _last_error(stderr):
    lines = [l.strip() for l in stderr.splitlines() if l.strip()]
    errors = [l for l in lines if "Error" in l or "error:" in l]
    return (errors or lines or ["no output"])[-1][:300]


def _short(error):
    return str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__


def _main(job_path):
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    from kerasllm.models.classifier import TextClassifier

    clf = TextClassifier.load(job["classifier"])
    model = None
    if job["model"]:
        from kerasllm._tf import keras
        from kerasllm.models.classifier_layers import HashedBigrams, MaskedMean

        model = keras.models.load_model(job["model"], compile=False,
                                        custom_objects={"HashedBigrams": HashedBigrams, "MaskedMean": MaskedMean})
    flatbuffer = convert_here(clf, job["mode"], job["representative_texts"], job["buckets"], model)
    tmp = job["output"] + ".tmp"
    Path(tmp).write_bytes(flatbuffer)
    os.replace(tmp, job["output"])


if __name__ == "__main__":
    _main(sys.argv[1])
