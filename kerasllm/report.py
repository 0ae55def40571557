"""The main job's report: Markdown and HTML pages with PNG plots, from plain numbers.

Each section is a title, a paragraph, an optional table and an optional picture; the same list
renders to ``report.md`` and ``report.html``. The plot helpers name their axes and give units,
so a reader can see the trade-offs from the pictures alone.
"""
from __future__ import annotations

import html
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from kerasllm.export.layout import make_readable


@dataclass
class Section:
    title: str
    text: str = ""
    table: list = field(default_factory=list)  # list of dicts, one per row (columns from the first row)
    image: str | None = None  # file name of a PNG beside the report


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(histories, path):
    """histories: {model name: {"x_label": ..., "y_label": ..., series name: [values]}} -> one panel each."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 4), squeeze=False)
    for ax, (name, history) in zip(axes[0], histories.items()):
        for series, values in history.items():
            if series in ("x_label", "y_label", "x") or not values:
                continue
            x = history.get("x") or list(range(1, len(values) + 1))
            ax.plot(x[: len(values)], values, marker="o", markersize=3, label=series)
        ax.set_title(name)
        ax.set_xlabel(history.get("x_label", "epoch"))
        ax.set_ylabel(history.get("y_label", "loss (cross-entropy, nats)"))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def plot_latency_ladder(rows, path, title="Latency of one text, end to end"):
    """rows: [(path name, p50 microseconds)], slowest first; log-scale bars with the value printed."""
    plt = _pyplot()
    names, values = [r[0] for r in rows], [r[1] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.5))
    bars = ax.barh(range(len(rows)), values, color="#4c72b0")
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("median latency per text (µs, log scale)")
    ax.set_title(title)
    for bar, value in zip(bars, values):
        ax.text(value * 1.1, bar.get_y() + bar.get_height() / 2, _us(value), va="center")
    ax.set_xlim(min(values) / 2, max(values) * 8)
    fig.tight_layout()
    _save(fig, path)


def plot_throughput(batch_sizes, series, path, title="Decode speed against batch size"):
    """series: {variant: [tokens per second at each batch size]}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, values in series.items():
        ax.plot(batch_sizes, values, marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batch_sizes, [str(b) for b in batch_sizes])
    ax.set_xlabel("batch size (prompts decoded together)")
    ax.set_ylabel("new tokens per second (all rows)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    _save(fig, path)


def _us(value):
    return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.0f} µs"


def _save(fig, path):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp, dpi=110)
    _pyplot().close(fig)
    make_readable(tmp)  # mkstemp makes 0600
    os.replace(tmp, path)


def write_report(directory, title, sections, intro=""):
    """Write ``report.md`` and ``report.html`` into ``directory`` (pictures already there)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    md = [f"# {title}", "", intro, ""]
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(intro)}</p>"]
    for s in sections:
        md += [f"## {s.title}", "", s.text, ""]
        body += [f"<h2>{html.escape(s.title)}</h2>", f"<p>{html.escape(s.text)}</p>"]
        if s.table:
            columns = list(s.table[0])
            md += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            md += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in s.table]
            md.append("")
            body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>")
            body += ["<tr>" + "".join(f"<td>{html.escape(_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                     for r in s.table]
            body.append("</table>")
        if s.image:
            md += [f"![{s.title}]({s.image})", ""]
            body.append(f'<img src="{html.escape(s.image)}" alt="{html.escape(s.title)}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
             "img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>")
    for name, text in (("report.md", "\n".join(md)), ("report.html", page)):
        fd, tmp = tempfile.mkstemp(dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        make_readable(tmp)
        os.replace(tmp, directory / name)
    return directory / "report.md", directory / "report.html"


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def metrics_table(metrics):
    """A plain-text table: overall accuracy and macro-F1, then precision/recall/F1/support per class."""
    width = max(8, *(len(c) for c in metrics["per_class"]))
    lines = [f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}",
             f"{'class':<{width}}  precision  recall     f1  support"]
    lines += [f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}"
              for name, m in metrics["per_class"].items()]
    return "\n".join(lines)
