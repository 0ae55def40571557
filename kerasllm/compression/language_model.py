"""Compress a ``LanguageModel``: post-training quantization of its TFLite prefill/decode model and
distillation into a smaller student (``tasks.train_language_model(..., teacher=lm)``), each measured
on held-out text through the TFLite runtime (validation loss, per-token decode time) and, for the
float models, decode speed through the XLA generation loop.

Pruning and QAT of language models are not implemented: asking for them is a clear error rather
than a silent skip.
"""
from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from kerasllm.compression import parse_methods
from kerasllm.compression.ptq import ConversionFailed, converting, mode_name, run_child
from kerasllm.compression.report import CompressionReport, failed_row
from kerasllm.compression.variant import FlatbufferSizes

LM_METHODS = ("ptq_dynamic", "ptq_float16")
SUPPORTED = ("ptq_dynamic", "ptq_float16", "distill", "distill+ptq_dynamic", "distill+ptq_float16", "prune",
             "prune+ptq_dynamic", "prune+ptq_float16")


class LanguageModelVariant(FlatbufferSizes):
    """A quantized language model's TFLite bytes, exportable with ``tasks.export(..., formats=("tflite",))``."""

    kind = "language_model"

    def __init__(self, name, lm, flatbuffer, quantization, notes=()):
        self.name, self.lm, self.flatbuffer = name, lm, bytes(flatbuffer)
        self.quantization, self.notes = quantization, list(notes)

    def __repr__(self):
        return f"LanguageModelVariant({self.name!r}, {mode_name(self.quantization)}, {len(self.flatbuffer)} bytes)"

    def write_tflite(self, path):
        from kerasllm.export.lm import runtime_config
        from kerasllm.export.tflite import attach

        Path(path).write_bytes(attach(self.flatbuffer, runtime_config(self.lm)))
        return path

    def export_artifacts(self, directory, formats, **options):
        from kerasllm.export import TFLITE_FILE

        if options:
            raise TypeError(f"a compressed variant is already converted; unexpected export options {sorted(options)}")
        if tuple(formats) != ("tflite",):
            raise ValueError(f"variant {self.name!r} exists only as TFLite; export it with formats=('tflite',)")
        self.write_tflite(Path(directory) / TFLITE_FILE)
        return {"architecture": self.lm.architecture, "model": self.lm.config.to_dict(),
                "tokenizer": self.lm.tokenizer.get_config() if self.lm.tokenizer is not None else None,
                "tflite": TFLITE_FILE, "tflite_signatures": ["prefill", "decode"],
                "quantization": self.quantization,
                "compression": {"method": self.name, "quantization": mode_name(self.quantization),
                                "notes": self.notes}}


def convert(lm, quantization, isolate=True, timeout=1800):
    """TFLite bytes of ``lm``'s prefill/decode functions in ``quantization`` (no fallback), in a
    child process unless ``isolate`` is false. Raises ``ptq.ConversionFailed``."""
    if not isolate:
        return convert_here(lm, quantization)
    with tempfile.TemporaryDirectory(prefix="kerasllm-lm-convert-") as tmp:
        lm.save(Path(tmp) / "lm")
        job = {"lm": str(Path(tmp) / "lm"), "mode": quantization}
        return run_child("kerasllm.compression.language_model", job, tmp, timeout)["flatbuffer"]


def convert_here(lm, quantization):
    from kerasllm.export.flatbuffer import compact
    from kerasllm.export.lm import build_tflite_functions
    from kerasllm.export.tflite import convert as tflite_convert

    with converting(quantization):
        return compact(tflite_convert(build_tflite_functions(lm), lm.model, quantization=quantization))


def _convert_job(job):
    from kerasllm.models.language_model import load_language_model

    return convert_here(load_language_model(job["lm"]), job["mode"]), []


def measure(variant, token_ids, context_length):
    """Validation loss (nats per token) of ``token_ids`` through the TFLite prefill/decode signatures,
    and the median time of one decode step: each window is prefilled with its first token, then
    every next token is decoded, so every prediction comes from the decode path users run."""
    from kerasllm.runtime.language_model import TFLiteLanguageModel

    with tempfile.TemporaryDirectory(prefix="kerasllm-lm-variant-") as tmp:
        runtime = TFLiteLanguageModel(variant.write_tflite(Path(tmp) / "model.tflite"))
        n_cache = runtime._n_cache
        losses, times, predicted = [], [], []
        for start in range(0, len(token_ids) - 1, context_length):
            window = np.asarray(token_ids[start:start + context_length + 1], np.int32)
            if len(window) < 2:
                break
            out = runtime._prefill(tokens=window[None, :1], pad=np.zeros(1, np.int32))
            for pos in range(1, len(window)):
                logits = out["logits"][0].astype(np.float64)
                logits -= logits.max()
                losses.append(np.log(np.exp(logits).sum()) - logits[window[pos]])
                predicted.append(int(window[pos]))
                if pos == len(window) - 1 or pos >= context_length:
                    break
                cache = {f"cache_{i}": out[f"cache_{i}"] for i in range(n_cache)}
                begin = time.perf_counter()
                out = runtime._decode(token=window[pos:pos + 1], pos=np.int32(pos), pad=np.zeros(1, np.int32), **cache)
                times.append(time.perf_counter() - begin)
    # nats per character too: comparable across tokenizers (a subword token spans several characters)
    chars = len(variant.lm.tokenizer.decode(predicted)) if predicted else 0
    return {"name": variant.name, "status": "ok", "quantization": mode_name(variant.quantization),
            "tflite_bytes": variant.tflite_bytes, "gzip_bytes": variant.gzip_bytes,
            "loss": float(np.mean(losses)) if losses else float("nan"), "tokens": len(losses),
            "loss_per_char": float(np.sum(losses) / chars) if chars else float("nan"),
            "token_losses": np.asarray(losses),
            "p50_ms": float(np.median(times) * 1000) if times else 0.0, "notes": variant.notes}


def loss_interval(base, other, n=1000, seed=0):
    """95% paired-bootstrap interval of the relative loss increase (other - base) / base over tokens."""
    idx = np.random.default_rng(seed).integers(0, len(base), size=(n, len(base)))
    b, o = base[idx].mean(1), other[idx].mean(1)
    return [float(np.percentile((o - b) / b, 2.5)), float(np.percentile((o - b) / b, 97.5))]


def xla_tokens_per_s(lm, new_tokens=128, repeats=3):
    """Greedy decode speed of one sequence through the compiled (XLA) generation loop, after a warm-up."""
    prompt = np.ones((1, 1), np.int32)
    lm.generate_tokens(prompt, new_tokens)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        lm.generate_tokens(prompt, new_tokens)
        times.append(time.perf_counter() - start)
    return new_tokens / float(np.median(times))


def prune_ffn(lm, text, sparsity=0.8, steps=300, learning_rate=1e-3, batch_size=8, seed=0, time_budget_s=None):
    """Structured pruning of a Transformer LM: keep the ``1 - sparsity`` most important feed-forward
    units of every block (importance: norm of the unit's input column times its output row), slice
    ``fc``/``out``, then fine-tune ``steps`` steps (or ``time_budget_s`` seconds, whichever comes first)
    on the first 90% of ``text`` with the unpruned model as teacher (``training.lm.train(teacher=lm)``).
    Returns ``(pruned LanguageModel, info)``."""
    import dataclasses

    from kerasllm.compression.prune import MethodUnsupported
    from kerasllm.models.language_model import LanguageModel, build_model
    from kerasllm.training.lm import train

    if lm.architecture != "transformer":
        raise MethodUnsupported(f"LM pruning supports the Transformer, not {lm.architecture!r}")
    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    if not isinstance(text, str):
        raise ValueError("pruning a language model fine-tunes it: train_texts must be one str")
    cfg = lm.config
    keep = max(1, int(round(cfg.ff * (1.0 - sparsity))))
    model = build_model("transformer", dict(dataclasses.asdict(cfg), ff=keep), seed)
    for old, new in zip(lm.model.blocks, model.blocks):
        w1, b1 = old.fc.get_weights()
        w2, b2 = old.out.get_weights()
        idx = np.sort(np.argsort(-(np.linalg.norm(w1, axis=0) * np.linalg.norm(w2, axis=1)), kind="stable")[:keep])
        new.fc.set_weights([w1[:, idx], b1[idx]])
        new.out.set_weights([w2[idx], b2])
        for name in ("ln1", "qkv", "proj", "ln2"):
            getattr(new, name).set_weights(getattr(old, name).get_weights())
    for name in ("token_embedding", "position_embedding", "ln_f"):
        getattr(model, name).set_weights(getattr(lm.model, name).get_weights())
    ids = np.asarray(lm.encode_corpus(text), np.int32)
    split = int(len(ids) * 0.9)
    history = train(model, ids[:split], None, context_length=cfg.context_length, steps=steps,
                    time_budget_s=time_budget_s, batch_size=batch_size, learning_rate=learning_rate,
                    warmup_steps=min(50, steps // 10), seed=seed, verbose=0, teacher=lm)
    done = history.get("steps", steps) if isinstance(history, dict) else steps
    return LanguageModel(model, lm.tokenizer), {"ff": f"{cfg.ff} -> {keep} per block", "fine_tune_steps": done}


def train_student(teacher, text, student):
    """The distilled student: ``student`` is a trained LanguageModel, or the hyperparameters of one
    to train on ``text`` from the teacher's soft targets (``tasks.train_language_model(teacher=...)``)."""
    if hasattr(student, "model") and hasattr(student, "tokenizer"):
        return student
    if not isinstance(student, dict):
        raise ValueError("student must be a trained LanguageModel or a dict of its hyperparameters "
                         "(e.g. {'hidden': 64, 'ff': 256, 'steps': 600})")
    if not isinstance(text, str):
        raise ValueError("distilling a language model needs train_texts as one str (the teacher's text)")
    import tasks

    options = {"verbose": 0, **student}
    return tasks.train_language_model(text, architecture=teacher.architecture, teacher=teacher, **options)


def compress_language_model(model, train_texts=None, train_labels=None, validation=None, methods=LM_METHODS,
                            eval_tokens=1024, student=None, sparsity=0.8, prune_steps=300, prune_time_s=None,
                            isolate=True, verbose=False, **options):
    """``tasks.compress`` for a language model: rows "float", then one per method; quality is the
    validation loss (nats per token, lower is better; ``best`` budgets are relative, 0.02 = 2%);
    ``p50_ms`` is one TFLite decode step; ``tflite_tokens_per_s`` its inverse; ``xla_tokens_per_s``
    greedy decode through the XLA loop (float models only). ``validation``: held-out text (default:
    the last 10% of ``train_texts`` when that is one string). ``student`` (for "distill"): a trained
    student LanguageModel or its hyperparameters (default: half the teacher's width). "prune":
    ``prune_ffn`` at ``sparsity`` with ``prune_steps`` (at most ``prune_time_s`` s) of fine-tuning.
    ``loss_per_char``: the same loss in nats per character of the predicted tokens."""
    if options:
        raise TypeError(f"unexpected options for a language model: {sorted(options)}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the language model has no tokenizer: compression measures loss on text")
    plans = parse_methods(methods)
    unsupported = ["+".join(p) for p in plans if "+".join(p) not in SUPPORTED]
    if unsupported:
        raise ValueError(f"for language models compress supports {SUPPORTED}; not yet {unsupported}")
    if validation is None and isinstance(train_texts, str):
        validation = train_texts[int(len(train_texts) * 0.9):]
    if not isinstance(validation, str) or not validation:
        raise ValueError("validation must be a held-out text (a non-empty str) for a language model")
    ids = np.asarray(model.encode_corpus(validation), np.int32)[: eval_tokens + 1]
    if len(ids) < 2:
        raise ValueError("validation text is too short: it encodes to fewer than 2 tokens")
    context = model.context_length or len(ids)
    rows, variants, students, details = [], {}, {}, {}
    for steps in [("float",)] + [p for p in plans]:
        name = "+".join(steps)
        if name in variants:
            continue
        mode = next((s[len("ptq_"):] for s in steps if s.startswith("ptq_")), None)
        lm = model
        if "distill" in steps:
            if "student" not in students:
                if verbose:
                    print("[compress] distilling a student", flush=True)
                default = {"hidden": max(8, model.config.hidden // 2), "ff": max(16, model.config.ff // 2)} \
                    if model.architecture == "transformer" else {"hidden": max(8, model.config.hidden // 2)}
                students["student"] = train_student(model, train_texts, student if student is not None else default)
            lm = students["student"]
        if "prune" in steps:
            if "pruned" not in students:
                if verbose:
                    print("[compress] pruning the feed-forward units", flush=True)
                from kerasllm.compression.prune import MethodUnsupported

                try:
                    students["pruned"] = prune_ffn(model, train_texts, sparsity, prune_steps,
                                                   time_budget_s=prune_time_s)
                except MethodUnsupported as e:
                    students["pruned"] = e
            if isinstance(students["pruned"], Exception):
                warnings.warn(f"compression method {name!r} failed: {students['pruned']}", RuntimeWarning,
                              stacklevel=2)
                rows.append(failed_row(name, mode_name(mode), str(students["pruned"])))
                continue
            lm, details[name] = students["pruned"][0], students["pruned"][1]
        if verbose:
            print(f"[compress] converting {name} ({mode_name(mode)})", flush=True)
        try:
            flatbuffer = convert(lm, mode, isolate=isolate)
        except ConversionFailed as e:
            if name == "float":
                raise RuntimeError(f"the float language model itself does not convert: {e}") from e
            warnings.warn(f"compression method {name!r} failed: {e}", RuntimeWarning, stacklevel=2)
            rows.append(failed_row(name, mode_name(mode), str(e)))
            continue
        variant = LanguageModelVariant(name, lm, flatbuffer, mode)
        row = measure(variant, ids, context)
        row["parameters"] = int(lm.num_params)
        row["tflite_tokens_per_s"] = 1000.0 / row["p50_ms"] if row["p50_ms"] else float("nan")
        row["xla_tokens_per_s"] = xla_tokens_per_s(lm) if mode is None else None
        rows.append(row)
        variants[name] = variant
    for r in rows:
        if r["status"] != "ok":
            continue
        r["size_ratio"] = r["tflite_bytes"] / rows[0]["tflite_bytes"]
        r["gzip_ratio"] = r["gzip_bytes"] / rows[0]["gzip_bytes"]
        r["quality_drop"] = (r["loss"] - rows[0]["loss"]) / rows[0]["loss"]
        r["drop_ci"] = {"loss": loss_interval(rows[0]["token_losses"], r["token_losses"])}
        r["decode_speedup"] = rows[0]["p50_ms"] / r["p50_ms"] if r["p50_ms"] else float("nan")
    for r in rows:
        r.pop("token_losses", None)
    return CompressionReport(rows, variants, quality="loss", higher_is_better=False, details=details,
                             title=f"a {model.architecture} language model", latency_unit="per decode step")


if __name__ == "__main__":
    from kerasllm.compression.ptq import child_main

    child_main(sys.argv[1], _convert_job)
