"""``kerasllm compress``: compress a trained model every requested way; write the report and plot."""
from __future__ import annotations

from pathlib import Path

def add_compression_commands(subparsers):
    from kerasllm.compression import DEFAULT_METHODS, METHODS

    p = subparsers.add_parser(
        "compress", help="prune, quantize and distill a trained model; write a size/quality report and plot",
        description="Compress a trained model with each method and compare the variants (TFLite bytes, gzip "
                    "bytes, accuracy, p50 latency) in report.md / report.json / report.png.")
    p.add_argument("--model", required=True,
                   help="saved_models/NAME (an export holding its trainable model), a TextClassifier.save folder "
                        "or a LanguageModel.save folder")
    p.add_argument("--data", required=True, help="classifier: labelled .csv/.tsv/.jsonl (or label<TAB>text .tsv); "
                                                 "language model: a text file (its last 10%% is the validation)")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--test-size", type=float, default=0.2, help="stratified share held out for validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=None,
                   help=f"default: {','.join(DEFAULT_METHODS)} (language models: ptq_dynamic,ptq_float16); "
                        f"comma-separated, from {', '.join(METHODS)}; combine steps with + (e.g. prune+qat)")
    p.add_argument("--sparsity", type=float, default=0.8, help="pruning target (default 0.8)")
    p.add_argument("--out", default="compression_report", help="folder for report.md, report.json, report.png")
    p.add_argument("--export", metavar="TARGET", help="also export the best variant (TFLite) to TARGET, "
                                                      "e.g. saved_models/sms-small")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="quality budget for the best variant (accuracy: 0.01 = 1 point)")
    p.set_defaults(run=_compress)
    return p


def resolve_model(path):
    """A trained model from a ``TextClassifier.save`` / ``LanguageModel.save`` folder, or an export
    that carries the classifier's trainable model."""
    from kerasllm.models.classifier import CONFIG_FILE, EXPORT_KERAS_DIR, load_classifier

    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return load_classifier(path)
    if (path / "language_model.json").is_file():
        from kerasllm.models.language_model import load_language_model

        return load_language_model(path)
    if not path.exists():
        raise FileNotFoundError(f"--model: {path} does not exist")
    from kerasllm.export.layout import resolve_version

    version_dir = resolve_version(path)
    if (version_dir / EXPORT_KERAS_DIR / CONFIG_FILE).is_file():
        return load_classifier(version_dir / EXPORT_KERAS_DIR)
    raise ValueError(f"--model: {version_dir} holds no trainable model ({EXPORT_KERAS_DIR}/{CONFIG_FILE}); compression "
                     "fine-tunes the Keras model, so give a folder written by TextClassifier.save or an export "
                     "made by a kerasllm version that includes it")


def _compress(args):
    import tasks
    from kerasllm.compression import DEFAULT_METHODS
    from kerasllm.data import read_table, read_text, stratified_split

    model = resolve_model(args.model)
    if model.kind == "language_model":
        from kerasllm.compression.language_model import LM_METHODS

        methods = _methods(args.methods, LM_METHODS)
        text = read_text(args.data)
        print(f"compressing with {', '.join(methods)}; validation: the last 10% of {args.data}")
        report = tasks.compress(model, text, validation=text[int(len(text) * 0.9):], methods=methods, verbose=True)
    else:
        methods = _methods(args.methods, DEFAULT_METHODS)
        texts, labels = read_table(args.data, args.text_column, args.label_column)
        train, train_labels, val, val_labels = stratified_split(texts, labels, args.test_size, args.seed)
        print(f"compressing with {', '.join(methods)}: {len(train)} training texts, {len(val)} for validation")
        report = tasks.compress(model, train, train_labels, validation=(val, val_labels), methods=methods,
                                sparsity=args.sparsity, seed=args.seed, verbose=True)
    print()
    print(report.to_markdown())
    paths = report.save(args.out)
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['plot']}")
    if args.export:
        best = report.best(max_quality_drop=args.max_drop)
        exported = tasks.export(best, args.export, formats=("tflite",))
        print(f"exported {best.name} ({best.tflite_bytes} TFLite bytes) to {exported['version_dir']}")
    return 0


def _methods(text, default):
    return tuple(default) if text is None else tuple(m.strip() for m in text.split(",") if m.strip())
