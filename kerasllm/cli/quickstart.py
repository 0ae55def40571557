"""``kerasllm quickstart``: the main job on built-in text (thin: calls tasks.quickstart)."""
from __future__ import annotations


def add_quickstart_command(sub):
    from tasks.quickstart import LM_MAX_STEPS, LM_TARGET_LOSS, QUICK_LM_STEPS

    p = sub.add_parser("quickstart", help="the main job on built-in text: train, compress, export, measure, report",
                       description="Train a classifier, a character language model and a similarity index, "
                                   "compress, export to TF Serving's layout and TFLite, measure, and write a report. "
                                   "Inputs, names and folders are checked before anything trains.")
    p.add_argument("--out", default="saved_models", help="export root (default: saved_models)")
    p.add_argument("--report-dir", default="reports/quickstart", help="where the report goes")
    p.add_argument("--data", help="your labelled file (.csv/.tsv/.jsonl) for the classifier and similarity index")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--lm-text", help="your text file for the language model (default: Python's documentation)")
    p.add_argument("--lm-target-loss", type=float, default=LM_TARGET_LOSS,
                   help=f"train the language model until its held-out loss is at most this many nats per "
                        f"character (default {LM_TARGET_LOSS})")
    p.add_argument("--lm-max-steps", type=int, default=None,
                   help=f"... or until this many steps (default {LM_MAX_STEPS}; {QUICK_LM_STEPS} with --quick)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run in about a minute: every step and artifact, barely trained models")
    p.set_defaults(run=_quickstart)


def _quickstart(args):
    from tasks.quickstart import quickstart

    quickstart(out=args.out, report_dir=args.report_dir, data=args.data, text_column=args.text_column,
               label_column=args.label_column, lm_text=args.lm_text, lm_target_loss=args.lm_target_loss,
               lm_max_steps=args.lm_max_steps, quick=args.quick)
