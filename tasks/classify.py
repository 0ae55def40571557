"""Classifier tasks: train from texts or a file, predict."""
from __future__ import annotations


def train_classifier(texts, labels, validation=None, architecture="simple_rnn", epochs=None, seed=0, verbose=0,
                     strategy=None, **hparams):
    """Train a text classifier on raw strings and labels (str or int); returns a fitted ``kerasllm.TextClassifier``.

    validation: ``(texts, labels)`` for early stopping, or None to hold out 10% of the training data.
    epochs: a fixed number of epochs, or None for early stopping on the validation loss.
    hparams: any ``TextClassifier`` setting (units, embedding_dim, bidirectional, pooling="max_mean",
    dropout, embedding_dropout, class_weight="balanced" or {label: weight}, recurrent, bag_of_ngrams,
    bag_c, char_ngrams, max_length, learning_rate, ...).
    strategy: None, "mirrored" (this machine's devices), "multi_worker" (the cluster in TF_CONFIG)
    or a ``tf.distribute.Strategy``.
    """
    from kerasllm.models.classifier import TextClassifier

    clf = TextClassifier(architecture=architecture, **hparams)
    return clf.fit(texts, labels, validation=validation, epochs=epochs, seed=seed, verbose=verbose,
                   strategy=strategy)


def train_classifier_from_file(path, text_column="text", label_column="label", **kwargs):
    """``train_classifier`` on a .csv/.tsv/.jsonl file with the named columns."""
    from kerasllm.data import read_table

    texts, labels = read_table(path, text_column, label_column)
    return train_classifier(texts, labels, **kwargs)
