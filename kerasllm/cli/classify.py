"""``kerasllm classify train|predict``: the text classifier on the command line (thin: calls tasks)."""
from __future__ import annotations

import sys


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
    from kerasllm.report import metrics_table

    texts, labels = read_table(args.data, args.text_column, args.label_column)
    train, train_labels, test, test_labels = stratified_split(texts, labels, args.test_size, args.seed)
    print(f"training on {len(train)} texts, {len(set(labels))} classes; {len(test)} held out for the metrics")
    clf = tasks.train_classifier(train, train_labels, architecture=args.architecture, epochs=args.epochs,
                                 seed=args.seed, verbose=1 if sys.stdout.isatty() else 2)
    print(metrics_table(clf.evaluate(test, test_labels)))
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
