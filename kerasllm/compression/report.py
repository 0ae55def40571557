"""The compression report: one row per variant, a Markdown table, a size-vs-quality plot, and
``best()`` to pick the smallest variant within a quality budget."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kerasllm.export.layout import atomic_file, write_json_atomic, write_text_atomic


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

    def __init__(self, rows, variants, quality="accuracy", higher_is_better=True, details=None, title="model",
                 latency_unit="per text"):
        if not rows or rows[0]["name"] != "float":
            raise ValueError("a compression report starts with the uncompressed 'float' row")
        self.rows, self.variants = list(rows), dict(variants)
        self.quality, self.higher_is_better = quality, higher_is_better
        self.details, self.title, self.latency_unit = dict(details or {}), title, latency_unit

    def __getitem__(self, name):
        return self.variants[name]

    @property
    def failed(self):
        """The rows of methods that failed (``status`` "failed", ``error`` says why)."""
        return [r for r in self.rows if r["status"] != "ok"]

    def best(self, max_quality_drop=0.01, metric=None, size="tflite_bytes"):
        """The smallest working variant (by ``size``: "tflite_bytes" or "gzip_bytes") whose drop in
        ``metric`` is at most ``max_quality_drop`` (classifier: "macro_f1" (default) or "accuracy",
        absolute, 0.01 = one point, measured on the *selection* half of the validation set, not the
        test half the report shows; language model: "loss", relative, 0.01 = 1%).
        The float model qualifies, so there is always an answer."""
        if size not in ("tflite_bytes", "gzip_bytes"):
            raise ValueError(f"size must be 'tflite_bytes' or 'gzip_bytes', got {size!r}")
        if max_quality_drop < 0:
            raise ValueError(f"max_quality_drop must be >= 0, got {max_quality_drop}")
        metrics = self._metrics()
        metric = metric or ("macro_f1" if "macro_f1" in metrics else self.quality)
        if metric not in metrics:
            raise ValueError(f"metric must be one of {metrics} for this report, got {metric!r}")

        def drop(r):
            return r["selection_drops"][metric] if "selection_drops" in r else r["quality_drop"]

        fits = [r for r in self.rows if r["status"] == "ok" and drop(r) <= max_quality_drop + 1e-9]
        return self.variants[min(fits, key=lambda r: (r[size], r["p50_ms"]))["name"]]

    # -- presentation -------------------------------------------------------------------------
    def _metrics(self):
        return ["accuracy", "macro_f1"] if self.quality == "accuracy" else [self.quality]

    def to_markdown(self):
        metrics = self._metrics()
        drop_unit = "points" if self.higher_is_better else "%"
        extra = [(k, label, f) for k, label, f in (("loss_per_char", "nats/char", "{:.4f}"),
                                                   ("parameters", "parameters", "{:,.0f}"),
                                                   ("xla_tokens_per_s", "XLA tok/s", "{:,.0f}"),
                                                   ("tflite_tokens_per_s", "TFLite tok/s", "{:,.0f}"))
                 if k in self.rows[0]]
        head = (["variant", "quantization", "TFLite KB", "× float", "gzip KB", "× float"] + metrics
                + [f"{self.quality} drop ({drop_unit}) [95% CI]", "p50 ms"] + [label for _, label, _ in extra])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        scale = 100
        for r in self.rows:
            if r["status"] != "ok":
                cells = [r["name"], f"FAILED ({r['quantization']})"] + ["—"] * (len(head) - 2)
                lines.append("| " + " | ".join(cells) + " |")
                continue
            cells = [r["name"], r["quantization"], f"{r['tflite_bytes'] / 1024:.1f}", f"{r['size_ratio']:.3f}",
                     f"{r['gzip_bytes'] / 1024:.1f}", f"{r['gzip_ratio']:.3f}"]
            cells += [f"{r[m]:.4f}" for m in metrics]
            ci = r.get("drop_ci", {}).get(self.quality)
            interval = f" [{ci[0] * scale:+.2f}, {ci[1] * scale:+.2f}]" if ci else ""
            cells += [f"{r['quality_drop'] * scale:+.2f}{interval}", f"{r['p50_ms']:.3f}"]
            cells += ["—" if r.get(k) is None else f.format(r[k]) for k, _, f in extra]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- **{r['name']}**: FAILED: {r['error']}" for r in self.failed]
        if "tokens" in self.rows[0]:
            notes.append(f"- drop: relative validation-loss increase over {self.rows[0]['tokens']} tokens, [95% "
                         "paired bootstrap interval over tokens]")
        elif "drop_ci" in self.rows[0]:
            notes.append(f"- drop: float minus variant on the test half ({self.rows[0].get('test_size', '?')} "
                         f"texts), [95% paired bootstrap interval]; `best()` chooses on the other half "
                         f"({self.rows[0].get('selection_size', '?')} texts)")
        notes += [f"- **{r['name']}**: {note}" for r in self.rows for note in r.get("notes", [])]
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
        write_text_atomic(md, self.to_markdown())
        write_json_atomic(directory / f"{stem}.json", json.loads(json.dumps(self.to_dict(), default=str)))
        return {"markdown": md, "json": directory / f"{stem}.json", "plot": self.plot(directory / f"{stem}.png")}

    def plot(self, path):
        """Two panels, TFLite KB and gzip KB (log scale), against validation quality; marker area grows
        with p50 latency. Variants at the same point share one label. Writes a PNG; returns its path."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, ScalarFormatter

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = 100.0 if self.quality == "accuracy" else 1.0
        ylabel = ("validation accuracy (%)" if self.quality == "accuracy"
                  else f"validation {self.quality} (nats per token, lower is better)")
        rows = [r for r in self.rows if r["status"] == "ok"]
        latencies = [r["p50_ms"] for r in rows]
        low, high = min(latencies), max(latencies)
        colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), dpi=120, sharey=True)
        for ax, size, label in ((axes[0], "tflite_bytes", "TFLite file size (KB, log scale)"),
                                (axes[1], "gzip_bytes", "gzip-compressed size (KB, log scale)")):
            points = []  # [x, y, labels]: variants this close share one label
            ys = [r[self.quality] * scale for r in rows]
            near = 0.04 * ((max(ys) - min(ys)) or 1.0)
            for i, r in enumerate(rows):
                x, y = r[size] / 1024, r[self.quality] * scale
                area = 80 + 700 * ((r["p50_ms"] - low) / (high - low) if high > low else 0.5)
                ax.scatter([x], [y], s=area, alpha=0.5, edgecolors="black",
                           color="black" if r["name"] == "float" else colors[i % len(colors)])
                text = f"{r['name']} ({r['p50_ms']:.3f} ms)"
                for point in points:
                    if abs(np.log10(point[0] / x)) < 0.06 and abs(point[1] - y) < near:
                        point[2].append(text)
                        break
                else:
                    points.append([x, y, [text]])
            for x, y, names in points:
                # a neighbour just to the right at the same height: put this label above instead
                crowded = any(x < px <= 3 * x and abs(py - y) < near for px, py, _ in points)
                ax.annotate("\n".join(names), (x, y), textcoords="offset points", fontsize=7.5,
                            xytext=(0, 14) if crowded else (10, -4), ha="center" if crowded else "left",
                            va="bottom" if crowded else "top" if len(names) > 1 else "center")
            sizes = [r[size] / 1024 for r in rows]
            ax.set_xlim(min(sizes) / 1.4, max(sizes) * 3.0)  # room for the labels on the right
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
            ax.set_xlabel(label)
            ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))  # full values, no "+1.42" offset
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(ylabel)
        fig.suptitle(f"Compression of {self.title}: size vs quality "
                     f"(marker area grows with p50 latency {self.latency_unit}, {low:.3f}-{high:.3f} ms)",
                     fontsize=10)
        fig.tight_layout()
        try:
            with atomic_file(path, suffix=".png") as tmp:
                fig.savefig(tmp)
        finally:
            plt.close(fig)
        return path


def _short(value):
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 300 else text[:297] + "..."


def failed_row(name, quantization, error):
    """The report row of a method that failed: no sizes or scores, the reason in ``error``."""
    return {"name": name, "status": "failed", "quantization": quantization, "error": error, "notes": []}


def classification_scores(y, predicted, n_classes):
    """{"accuracy", "macro_f1"} of label indices ``predicted`` against ``y``."""
    return {"accuracy": float(np.mean(np.asarray(y) == np.asarray(predicted))),
            "macro_f1": float(_macro_f1(np.asarray(y)[None], np.asarray(predicted)[None], n_classes)[0])}


def _macro_f1(y, predicted, n_classes):
    """Macro-F1 of each row of the [resamples, n] label arrays (classes absent from both count 0, as sklearn)."""
    f1 = []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (y == c), axis=1)
        fp = np.sum((predicted == c) & (y != c), axis=1)
        fn = np.sum((predicted != c) & (y == c), axis=1)
        f1.append(np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0))
    return np.mean(f1, axis=0)


def bootstrap_drop(y, base, other, n_classes, metric="accuracy", n=1000, seed=0, level=0.95):
    """``level`` percentile interval of metric(base) - metric(other) over ``n`` paired bootstrap
    resamples of the texts (both models scored on the same resampled texts)."""
    y, base, other = (np.asarray(a) for a in (y, base, other))
    if n <= 0:
        return None
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n, len(y)))
    ys, bs, os_ = y[idx], base[idx], other[idx]
    if metric == "accuracy":
        drops = np.mean(bs == ys, axis=1) - np.mean(os_ == ys, axis=1)
    elif metric == "macro_f1":
        drops = _macro_f1(ys, bs, n_classes) - _macro_f1(ys, os_, n_classes)
    else:
        raise ValueError(f"metric must be 'accuracy' or 'macro_f1', got {metric!r}")
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(drops, tail)), float(np.percentile(drops, 100 - tail))]
