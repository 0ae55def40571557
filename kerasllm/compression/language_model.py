"""Compress a ``LanguageModel``: post-training quantization of its TFLite prefill/decode model,
measured on held-out text through the TFLite runtime (validation loss and per-token decode time).

Pruning, QAT and distillation of language models are not implemented yet: asking for them is a
clear error rather than a silent skip.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from kerasllm.compression import parse_methods
from kerasllm.compression.ptq import first_working, mode_name
from kerasllm.compression.report import CompressionReport
from kerasllm.compression.variant import FlatbufferSizes

LM_METHODS = ("ptq_dynamic", "ptq_float16")


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


def convert(lm, quantization):
    """TFLite bytes of ``lm``'s prefill/decode functions, with fallback (see ``ptq.FALLBACKS``)."""
    from kerasllm.export.flatbuffer import compact
    from kerasllm.export.lm import build_tflite_functions
    from kerasllm.export.tflite import convert as tflite_convert

    return first_working(quantization, lambda mode: compact(
        tflite_convert(build_tflite_functions(lm), lm.model, quantization=mode)))


def measure(variant, token_ids, context_length):
    """Validation loss (nats per token) of ``token_ids`` through the TFLite prefill/decode signatures,
    and the median time of one decode step: each window is prefilled with its first token, then
    every next token is decoded, so every prediction comes from the decode path users run."""
    from kerasllm.runtime.language_model import TFLiteLanguageModel

    with tempfile.TemporaryDirectory(prefix="kerasllm-lm-variant-") as tmp:
        runtime = TFLiteLanguageModel(variant.write_tflite(Path(tmp) / "model.tflite"))
        n_cache = runtime._n_cache
        total, count, times = 0.0, 0, []
        for start in range(0, len(token_ids) - 1, context_length):
            window = np.asarray(token_ids[start:start + context_length + 1], np.int32)
            if len(window) < 2:
                break
            out = runtime._prefill(tokens=window[None, :1], pad=np.zeros(1, np.int32))
            for pos in range(1, len(window)):
                logits = out["logits"][0].astype(np.float64)
                logits -= logits.max()
                total += np.log(np.exp(logits).sum()) - logits[window[pos]]
                count += 1
                if pos == len(window) - 1 or pos >= context_length:
                    break
                cache = {f"cache_{i}": out[f"cache_{i}"] for i in range(n_cache)}
                begin = time.perf_counter()
                out = runtime._decode(token=window[pos:pos + 1], pos=np.int32(pos), pad=np.zeros(1, np.int32), **cache)
                times.append(time.perf_counter() - begin)
    return {"name": variant.name, "quantization": mode_name(variant.quantization),
            "tflite_bytes": variant.tflite_bytes, "gzip_bytes": variant.gzip_bytes,
            "loss": total / max(count, 1), "tokens": count,
            "p50_ms": float(np.median(times) * 1000) if times else 0.0, "notes": variant.notes}


def compress_language_model(model, train_texts=None, train_labels=None, validation=None, methods=LM_METHODS,
                            eval_tokens=1024, verbose=False, **options):
    """``tasks.compress`` for a language model: rows "float", then one per method; quality is the
    validation loss (nats per token, lower is better; ``best`` budgets are relative, 0.02 = 2%);
    ``p50_ms`` is one decode step. ``validation``: held-out text (default: the last 10% of
    ``train_texts`` when that is one string)."""
    if options:
        raise TypeError(f"unexpected options for a language model: {sorted(options)}")
    if getattr(model, "tokenizer", None) is None:
        raise ValueError("the language model has no tokenizer: compression measures loss on text")
    plans = parse_methods(methods)
    unsupported = ["+".join(p) for p in plans if len(p) != 1 or p[0] not in LM_METHODS]
    if unsupported:
        raise ValueError(f"for language models compress supports {LM_METHODS}; not yet {unsupported}")
    if validation is None and isinstance(train_texts, str):
        validation = train_texts[int(len(train_texts) * 0.9):]
    if not isinstance(validation, str) or not validation:
        raise ValueError("validation must be a held-out text (a non-empty str) for a language model")
    ids = np.asarray(model.encode_corpus(validation), np.int32)[: eval_tokens + 1]
    if len(ids) < 2:
        raise ValueError("validation text is too short: it encodes to fewer than 2 tokens")
    context = model.context_length or len(ids)
    rows, variants = [], {}
    for steps in [("float",)] + [p for p in plans]:
        name = "+".join(steps)
        if name in variants:
            continue
        mode = None if name == "float" else name[len("ptq_"):]
        if verbose:
            print(f"[compress] converting {name} ({mode_name(mode)})", flush=True)
        flatbuffer, used, notes = convert(model, mode)
        variant = LanguageModelVariant(name, model, flatbuffer, used, notes)
        rows.append(measure(variant, ids, context))
        variants[name] = variant
    for r in rows:
        r["size_ratio"] = r["tflite_bytes"] / rows[0]["tflite_bytes"]
        r["gzip_ratio"] = r["gzip_bytes"] / rows[0]["gzip_bytes"]
        r["quality_drop"] = (r["loss"] - rows[0]["loss"]) / rows[0]["loss"]
        r["decode_speedup"] = rows[0]["p50_ms"] / r["p50_ms"] if r["p50_ms"] else float("nan")
    return CompressionReport(rows, variants, quality="loss", higher_is_better=False,
                             title=f"a {model.architecture} language model", latency_unit="per decode step")
