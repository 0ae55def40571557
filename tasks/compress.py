"""Compression task: every requested method side by side in one report."""
from __future__ import annotations

from kerasllm.compression import DEFAULT_METHODS


def compress(model, train_texts, train_labels=None, validation=None, methods=DEFAULT_METHODS, **options):
    """Compress a trained model (``TextClassifier`` or ``LanguageModel``) with each method.

    methods: "prune", "qat", "ptq_int8", "ptq_dynamic", "ptq_float16", "ptq_16x8", "distill", or
    combinations joined with "+" ("prune+qat", "prune+ptq_int8", "distill+ptq_int8"); language
    models: "ptq_dynamic", "ptq_float16", "distill", "distill+ptq_dynamic", "distill+ptq_float16".
    validation: ``(texts, labels)`` for a classifier (split into a selection half for ``best()`` and
    a test half for the report), a held-out text for a language model.
    options (classifier): sparsity=0.8, pruning="units" ("magnitude", "2:4"), prune_epochs=3,
    qat_epochs=2, distill_epochs=8, temperature=2.0, alpha=0.5, student={"embedding_dim", "units",
    "bigram_buckets"}, representative_size=300, latency_runs=200, isolate=True (convert in a child
    process), bootstrap=1000, seed=0, verbose=False. (language model): eval_tokens=1024,
    student={hyperparameters of the student, "steps"}, isolate=True, verbose=False.

    Returns a ``CompressionReport``: ``.rows`` (a failed method is a row with ``status`` "failed"
    and its ``error``), ``.to_markdown()``, ``.plot(path)``, ``.save(dir)``,
    ``.best(max_quality_drop=0.01, metric="macro_f1")`` (an exportable variant for ``tasks.export``).
    """
    from kerasllm.compression import compress as _compress

    return _compress(model, train_texts, train_labels=train_labels, validation=validation, methods=methods, **options)


def compress_from_files(model_path, data_path, text_column="text", label_column="label", test_size=0.2, seed=0,
                        **options):
    """``compress`` a classifier saved with ``TextClassifier.save`` on a labelled file, split
    stratified ``test_size`` for validation (the same split the benchmarks use)."""
    from kerasllm.data import read_table, stratified_split
    from kerasllm.models.classifier import load_classifier

    model = load_classifier(model_path)
    texts, labels = read_table(data_path, text_column, label_column)
    train_texts, train_labels, val_texts, val_labels = stratified_split(texts, labels, test_size=test_size, seed=seed)
    return compress(model, train_texts, train_labels, validation=(val_texts, val_labels), seed=seed, **options)
