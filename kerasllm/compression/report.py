"""The compression report: one row per variant, a Markdown table, a size-vs-quality plot, and
``best()`` to pick the smallest variant within a quality budget."""
from __future__ import annotations

import json
import os
from pathlib import Path

from kerasllm.export.layout import write_json_atomic


class CompressionReport:
    """``rows``: one dict per variant, the first named "float" (the uncompressed model).

    Each row has ``name``, ``quantization``, ``tflite_bytes``, ``gzip_bytes``, ``size_ratio`` and
    ``gzip_ratio`` (to float), the quality metrics (classifier: ``accuracy``, ``macro_f1``;
    language model: ``loss``), ``quality_drop`` and ``p50_ms`` (one input through the TFLite runtime),
    and ``notes``. ``variants[name]`` is the exportable variant; ``details[name]`` what each method
    reports about itself (sparsity per layer, quantized layers, student size).

    ``quality``: the metric ``best()`` compares; ``higher_is_better`` False for a loss, whose
    drop is then measured as a relative increase.
    """

    def __init__(self, rows, variants, quality="accuracy", higher_is_better=True, details=None, title="model"):
        if not rows or rows[0]["name"] != "float":
            raise ValueError("a compression report starts with the uncompressed 'float' row")
        self.rows, self.variants = list(rows), dict(variants)
        self.quality, self.higher_is_better = quality, higher_is_better
        self.details, self.title = dict(details or {}), title

    def __getitem__(self, name):
        return self.variants[name]

    def best(self, max_quality_drop=0.01, size="tflite_bytes"):
        """The smallest variant (by ``size``: "tflite_bytes" or "gzip_bytes") whose quality drop is at
        most ``max_quality_drop`` (accuracy: absolute, 0.01 = one point; loss: relative, 0.01 = 1%).
        The float model qualifies, so there is always an answer."""
        if size not in ("tflite_bytes", "gzip_bytes"):
            raise ValueError(f"size must be 'tflite_bytes' or 'gzip_bytes', got {size!r}")
        if max_quality_drop < 0:
            raise ValueError(f"max_quality_drop must be >= 0, got {max_quality_drop}")
        fits = [r for r in self.rows if r["quality_drop"] <= max_quality_drop + 1e-9]
        return self.variants[min(fits, key=lambda r: (r[size], r["p50_ms"]))["name"]]

    # -- presentation -------------------------------------------------------------------------
    def _metrics(self):
        return ["accuracy", "macro_f1"] if self.quality == "accuracy" else [self.quality]

    def to_markdown(self):
        metrics = self._metrics()
        drop_unit = "points" if self.higher_is_better else "%"
        head = (["variant", "quantization", "TFLite KB", "× float", "gzip KB", "× float"] + metrics
                + [f"drop ({drop_unit})", "p50 ms"])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [r["name"], r["quantization"], f"{r['tflite_bytes'] / 1024:.1f}", f"{r['size_ratio']:.3f}",
                     f"{r['gzip_bytes'] / 1024:.1f}", f"{r['gzip_ratio']:.3f}"]
            cells += [f"{r[m]:.4f}" for m in metrics]
            cells += [f"{r['quality_drop'] * 100:+.2f}", f"{r['p50_ms']:.3f}"]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- **{r['name']}**: {note}" for r in self.rows for note in r.get("notes", [])]
        for name, info in self.details.items():
            notes.append(f"- **{name}**: " + "; ".join(f"{k}: {_short(v)}" for k, v in info.items()))
        return "\n".join(lines + ([""] + notes if notes else [])) + "\n"

    def to_dict(self):
        return {"title": self.title, "quality": self.quality, "higher_is_better": self.higher_is_better,
                "rows": self.rows, "details": self.details}

    def save(self, directory, stem="report"):
        """``<stem>.md``, ``<stem>.json`` and ``<stem>.png`` in ``directory``; returns their paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        md = directory / f"{stem}.md"
        tmp = md.with_name(f".{md.name}.tmp-{os.getpid()}")
        tmp.write_text(self.to_markdown(), encoding="utf-8")
        os.replace(tmp, md)
        write_json_atomic(directory / f"{stem}.json", json.loads(json.dumps(self.to_dict(), default=str)))
        return {"markdown": md, "json": directory / f"{stem}.json", "plot": self.plot(directory / f"{stem}.png")}

    def plot(self, path):
        """Size (TFLite KB, log scale) against quality; marker area grows with p50 latency. Writes a PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = 100.0 if self.quality == "accuracy" else 1.0
        ylabel = ("validation accuracy (%)" if self.quality == "accuracy"
                  else f"validation {self.quality} (nats per token, lower is better)")
        latencies = [max(r["p50_ms"], 1e-3) for r in self.rows]
        top = max(latencies)
        fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
        for r, lat in zip(self.rows, latencies):
            x, y = r["tflite_bytes"] / 1024, r[self.quality] * scale
            ax.scatter([x], [y], s=60 + 900 * lat / top, alpha=0.55,
                       color="black" if r["name"] == "float" else None, edgecolors="black")
            ax.annotate(f"{r['name']}\n{lat:.2f} ms", (x, y), textcoords="offset points", xytext=(8, 6), fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("TFLite model size (KB, log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(f"Compression of {self.title}: size vs quality (marker area ∝ p50 latency, ms per input)")
        ax.title.set_fontsize(10)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
        fig.savefig(tmp)
        plt.close(fig)
        os.replace(tmp, path)
        return path


def _short(value):
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."
