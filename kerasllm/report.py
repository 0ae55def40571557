"""The main job's report: Markdown and HTML pages with PNG plots, from plain numbers.

Each section is a title, one sentence of what it shows, an optional table and an optional picture;
the same list renders to ``report.md`` (pictures beside it) and ``report.html`` (pictures embedded,
so the page can be mailed on its own). Numbers are formatted for people here, in one place:
:func:`duration_us`, :func:`size`, :func:`ratio`, :func:`number`. The plot helpers name their axes
and give units, so a reader can see the trade-offs from the pictures alone.
"""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from kerasllm.export.layout import atomic_file, write_text_atomic


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


def number(value, digits=3):
    """``value`` to ``digits`` significant digits, never in exponent notation: 0.000123, 41.6, 1,120."""
    value = float(value)
    if not math.isfinite(value):
        return "n/a"
    if value == 0:
        return "0"
    decimals = digits - 1 - math.floor(math.log10(abs(value)))
    rounded = round(value, decimals)
    decimals = digits - 1 - math.floor(math.log10(abs(rounded)))  # 0.9996 rounds up to 1.00, not 1.000
    if decimals <= 0:
        return f"{rounded:,.0f}"
    return f"{rounded:,.{decimals}f}"


def duration_us(microseconds):
    """A time given in µs, in the unit that reads best, to 3 significant digits: 41.6 µs, 112 ms, 1.23 s."""
    us = float(microseconds)
    if us < 999.5:  # what rounds to 1000 µs reads as 1.00 ms
        return f"{number(us)} µs"
    if us < 999.5e3:
        return f"{number(us / 1e3)} ms"
    return f"{number(us / 1e6)} s"


def duration_s(seconds):
    """Wall-clock time: 42 s, 6 min 12 s."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{number(seconds, 2) if seconds < 10 else f'{seconds:.0f}'} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def size(n_bytes):
    """Bytes as B, KB or MB (1 KB = 1000 bytes) to 3 significant digits."""
    n = float(n_bytes)
    for unit, scale in (("MB", 1e6), ("KB", 1e3)):
        if n >= scale * 0.9995:
            return f"{number(n / scale)} {unit}"
    return f"{n:.0f} B"


def ratio(value):
    """A ratio as a multiplier: 0.276×, 2,060×."""
    return f"{number(value)}×"


_us = duration_us


def _save(fig, path):
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=110)
    finally:
        _pyplot().close(fig)


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
            body.append(f'<img src="{_data_uri(directory / s.image)}" alt="{html.escape(s.title)}">')
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}"
             "img{max-width:100%}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(body) + "</body></html>")
    for name, text in (("report.md", "\n".join(md)), ("report.html", page)):
        write_text_atomic(directory / name, text)
    return directory / "report.md", directory / "report.html"


def _data_uri(path):
    """The picture inside the page (base64), so report.html needs no files beside it."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _cell(value):
    """Table cells are for people: numbers to 3 significant digits, lists joined, nothing empty."""
    if value is None or value == "" or (isinstance(value, (list, tuple, set, dict)) and not value):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) or type(value).__name__.startswith("int"):
        return f"{int(value):,}"
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return number(value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return "; ".join(_cell(v) for v in value)
    return str(value)


def metrics_table(metrics):
    """A plain-text table: overall accuracy and macro-F1, then precision/recall/F1/support per class."""
    width = max(8, *(len(c) for c in metrics["per_class"]))
    lines = [f"accuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}",
             f"{'class':<{width}}  precision  recall     f1  support"]
    lines += [f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}"
              for name, m in metrics["per_class"].items()]
    return "\n".join(lines)
