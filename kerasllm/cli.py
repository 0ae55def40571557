"""``kerasllm``: the command line. Thin: it parses arguments and calls the task functions.

TensorFlow is imported only by the commands that need it, so ``kerasllm --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Areas that add their own sub-commands: module -> function(subparsers). Missing modules are skipped.
COMMAND_MODULES = {
    "kerasllm.cli_similarity": "add_similarity_commands",
    "kerasllm.cli_language_model": "add_language_model_commands",
    "kerasllm.cli_compression": "add_compression_commands",
    "kerasllm.cli_serving": "add_serving_commands",
}


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, KeyError, TypeError, FileNotFoundError, FileExistsError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"kerasllm: error: {message}", file=sys.stderr)
        return 2


def build_parser():
    parser = argparse.ArgumentParser(
        prog="kerasllm", description="Train small text models on your own text, compress them, export them to "
        "TFLite and TF Serving, and answer fast.")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_quickstart_command(sub)
    add_classify_commands(sub)
    for module, function in COMMAND_MODULES.items():
        try:
            getattr(importlib.import_module(module), function)(sub)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
    return parser


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


# -- classify -----------------------------------------------------------------------------------
def add_classify_commands(sub):
    p = sub.add_parser("classify", help="train a text classifier or predict with one")
    csub = p.add_subparsers(title="classify commands", metavar="COMMAND")

    t = csub.add_parser("train", help="train on a labelled file and export it to saved_models/NAME")
    t.add_argument("--data", required=True, help="a .csv, .tsv or .jsonl file (or .tsv without header: label<TAB>text)")
    t.add_argument("--text-column", default="text")
    t.add_argument("--label-column", default="label")
    t.add_argument("--out", required=True, help="export folder, e.g. saved_models/sms")
    t.add_argument("--architecture", default="simple_rnn", choices=("simple_rnn", "lstm", "gru"))
    t.add_argument("--epochs", type=int, default=None, help="fixed epochs (default: early stopping)")
    t.add_argument("--test-size", type=float, default=0.2, help="stratified share held out for the metrics table")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--formats", default="saved_model,tflite")
    t.set_defaults(run=_classify_train)

    q = csub.add_parser("predict", help="label texts with an exported classifier")
    q.add_argument("--model", required=True, help="export folder (saved_models/NAME) or one version folder")
    q.add_argument("texts", nargs="*", help="texts to label (default: one text per line of --file or stdin)")
    q.add_argument("--file", help="read one text per line from this file ('-': standard input)")
    q.set_defaults(run=_classify_predict)


def _classify_train(args):
    import tasks
    from kerasllm.data import read_table, stratified_split

    texts, labels = read_table(args.data, args.text_column, args.label_column)
    train, train_labels, test, test_labels = stratified_split(texts, labels, args.test_size, args.seed)
    print(f"training on {len(train)} texts, {len(set(labels))} classes; {len(test)} held out for the metrics")
    clf = tasks.train_classifier(train, train_labels, architecture=args.architecture, epochs=args.epochs,
                                 seed=args.seed, verbose=1 if sys.stdout.isatty() else 2)
    print_metrics(clf.evaluate(test, test_labels))
    paths = tasks.export(clf, args.out, formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()))
    print(f"exported version {paths['version_dir'].name} to {paths['version_dir']}")


def _classify_predict(args):
    import kerasllm

    texts = list(args.texts)
    if args.file is not None or not texts:
        if args.file in (None, "-"):
            if args.file is None and sys.stdin.isatty():
                raise ValueError("no texts: give them as arguments, with --file PATH, or on standard input")
            lines = sys.stdin.read().splitlines()
        else:
            with open(args.file, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        texts += [line for line in lines if line.strip()]
    predictor = kerasllm.load(args.model)
    probs = predictor.predict_proba(texts)
    for text, row in zip(texts, probs):
        best = row.argmax()
        print(f"{predictor.classes[best]}\t{row[best]:.3f}\t{text}")


def print_metrics(metrics):
    """A plain table: overall accuracy and macro-F1, then precision/recall/F1/support per class."""
    print(f"\naccuracy {metrics['accuracy']:.4f}   macro-F1 {metrics['macro_f1']:.4f}")
    width = max(8, *(len(c) for c in metrics["per_class"]))
    print(f"{'class':<{width}}  precision  recall     f1  support")
    for name, m in metrics["per_class"].items():
        print(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:.4f}  {m['support']:7d}")


if __name__ == "__main__":
    sys.exit(main())
