"""``kerasllm quickstart``: the main job on built-in text (thin: calls tasks.quickstart)."""
from __future__ import annotations


# -- quickstart ---------------------------------------------------------------------------------
def add_quickstart_command(sub):
    p = sub.add_parser("quickstart", help="the main job on built-in text: train, compress, export, measure, report")
    p.add_argument("--out", default="saved_models", help="export root (default: saved_models)")
    p.add_argument("--report-dir", default="reports/quickstart", help="where the report goes")
    p.add_argument("--data", help="your labelled file (.csv/.tsv/.jsonl) for the classifier and similarity index")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--lm-text", help="your text file for the language model (default: Python's documentation)")
    p.add_argument("--lm-seconds", type=float, default=180, help="language-model training time (default 180)")
    p.set_defaults(run=_quickstart)


def _quickstart(args):
    from tasks.quickstart import quickstart

    quickstart(out=args.out, report_dir=args.report_dir, data=args.data, text_column=args.text_column,
               label_column=args.label_column, lm_text=args.lm_text, lm_seconds=args.lm_seconds)
