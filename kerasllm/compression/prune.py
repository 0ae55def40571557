"""Pruning of a trained classifier, then fine-tuning.

``pruning="units"`` (default) removes whole recurrent units: the exported file stores the folded
table ``E @ W + b`` (vocabulary x units) densely, so only fewer units make the file smaller.
``"magnitude"`` (tfmot ``prune_low_magnitude``) and ``"2:4"`` zero single weights: the zeros
are stored densely in a .tflite (TFLite's sparse encoding covers fully-connected/conv weights,
not the gathered tables that hold this model's bytes), so they shrink only the gzip size.
"""
from __future__ import annotations

import numpy as np

from kerasllm.compression.training import (copy_weights, encode_labelled, fine_tune, refold, restore_masks,
                                            with_model)

PRUNABLE = ("Embedding", "Dense", "SimpleRNN", "LSTM", "GRU")
PRUNING = ("units", "magnitude", "2:4")


class MethodUnsupported(ValueError):
    """A compression method does not apply to this model (reported as a failed row, with the reason)."""


def prune_units(clf, texts, labels, sparsity=0.8, epochs=3, learning_rate=None, seed=0):
    """Structured pruning: keep the ``1 - sparsity`` most important recurrent units (per direction),
    slice every weight that reads or writes them, fold the hashed-bigram rows of the n-gram table
    into the fewest (a power-of-two divisor of their count) that keep at least ``1 - sparsity`` of them,
    and fine-tune the smaller classifier.

    A unit's importance is the norm of its input projection (``E @ W + b`` over the vocabulary)
    times the norm of its output weights: what it can carry times how much the logits read it.
    Returns ``(pruned_classifier, info)``.
    """
    from kerasllm._tf import keras
    from kerasllm.models.classifier import build_model

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    cfg = clf.config
    if cfg.architecture != "simple_rnn":
        raise MethodUnsupported(f"unit pruning supports the SimpleRNN classifier, not {cfg.architecture!r} "
                                "(use pruning='magnitude')")
    units = int(cfg.units)
    keep_n = max(1, int(round(units * (1.0 - sparsity))))
    model = clf.model
    rnn_name = "bidirectional" if cfg.bidirectional else "simple_rnn"
    rnn_weights = model.get_layer(rnn_name).get_weights()  # per direction: kernel, recurrent, bias
    out_kernel, out_bias = model.get_layer("rnn_logits").get_weights()
    table = model.get_layer("embedding").get_weights()[0]
    sliced, kept_rows = [], []
    for direction in range(len(rnn_weights) // 3):
        kernel, recurrent, bias = rnn_weights[3 * direction: 3 * direction + 3]
        rows = out_kernel[direction * units:(direction + 1) * units]
        importance = np.linalg.norm(table @ kernel + bias, axis=0) * np.linalg.norm(rows, axis=1)
        keep = np.sort(np.argsort(-importance, kind="stable")[:keep_n])
        sliced += [kernel[:, keep], recurrent[np.ix_(keep, keep)], bias[keep]]
        kept_rows.append(rows[keep])
    buckets = int(cfg.bigram_buckets)
    new_buckets = buckets
    if cfg.bag_of_ngrams:
        # the hashed-bigram rows: fold to a power-of-two divisor B' of B; hash % B' == (hash % B) % B',
        # so each new bucket is the sum of the old buckets it merges (then fine-tuning sorts out collisions)
        while new_buckets % 2 == 0 and new_buckets // 2 >= max(256, buckets * (1.0 - sparsity)):
            new_buckets //= 2
    out = with_model(clf, None, units=keep_n, bigram_buckets=new_buckets)
    keras.utils.set_random_seed(seed)
    out.model = build_model(out.config)
    for layer in out.model.layers:
        if layer.name == "ngram_logits_table":
            old = model.get_layer(layer.name).get_weights()[0]
            head, tail = old[: len(old) - buckets], old[len(old) - buckets:]
            layer.set_weights([np.concatenate([head, tail.reshape(-1, new_buckets, tail.shape[1]).sum(0)])])
        elif layer.name == rnn_name:
            layer.set_weights(sliced)
        elif layer.name == "rnn_logits":
            layer.set_weights([np.concatenate(kept_rows, axis=0), out_bias])
        elif layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    x, y = encode_labelled(clf, texts, labels)
    fine_tune(out.model, x, y, epochs, learning_rate or cfg.learning_rate / 3, cfg.batch_size, seed=seed)
    out._refolded = False
    return out, {"pruning": "units", "units": f"{units} -> {keep_n} per direction",
                 "removed_unit_fraction": round(1 - keep_n / units, 4),
                 "bigram_buckets": f"{buckets} -> {new_buckets}"}


def prune_classifier(clf, texts, labels, sparsity=0.8, epochs=3, learning_rate=None, pruning="units", seed=0):
    """Prune ``clf``: ``pruning="units"`` removes whole recurrent units (``prune_units``); otherwise
    fine-tune while pruning its weights to ``sparsity`` (polynomial schedule), then strip the
    pruning wrappers; ``"2:4"`` prunes 2 of every 4 weights instead.

    Returns ``(pruned_classifier, info)``; ``info["sparsity"]`` is the fraction of zeros reached
    per pruned weight, ``info["pruned_layers"]`` the layers pruned.
    """
    if pruning not in PRUNING:
        raise ValueError(f"pruning must be one of {PRUNING}, got {pruning!r}")
    if pruning == "units":
        return prune_units(clf, texts, labels, sparsity, epochs, learning_rate, seed)
    import tensorflow_model_optimization as tfmot

    from kerasllm._tf import keras

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    clf = refold(clf)
    x, y = encode_labelled(clf, texts, labels)
    steps = max(1, -(-len(x) // clf.config.batch_size)) * epochs
    if pruning == "2:4":
        params = {"sparsity_m_by_n": (2, 4)}
    else:
        # reach the target after 2/3 of the steps, then train the survivors at that sparsity
        params = {"pruning_schedule": tfmot.sparsity.keras.PolynomialDecay(
            initial_sparsity=0.0, final_sparsity=float(sparsity), begin_step=0,
            end_step=max(1, int(steps * 2 / 3)), frequency=max(1, steps // 50))}
    pruned_names = []

    def wrap(layer):
        # the frozen, refolded recurrence stays dense: its identity kernel must stay the identity
        if type(layer).__name__ in PRUNABLE and layer.trainable:
            pruned_names.append(layer.name)
            return tfmot.sparsity.keras.prune_low_magnitude(layer, **params)
        return layer.__class__.from_config(layer.get_config())

    wrapped = keras.models.clone_model(clf.model, clone_function=wrap)
    copy_weights(clf.model, wrapped)
    wrapped = restore_masks(wrapped)
    fine_tune(wrapped, x, y, epochs, learning_rate or clf.config.learning_rate / 3, clf.config.batch_size,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], seed=seed)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    pruned = with_model(clf, stripped)
    pruned._refolded = getattr(clf, "_refolded", False)
    return pruned, {"pruned_layers": pruned_names, "sparsity": weight_sparsity(stripped, pruned_names),
                    "pruning": pruning,
                    "target_sparsity": "2:4" if pruning == "2:4" else float(sparsity)}


def weight_sparsity(model, layer_names):
    """{"layer/weight": fraction of exact zeros} for the kernels/tables of the named layers."""
    out = {}
    for name in layer_names:
        for weight in model.get_layer(name).weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in ("embeddings", "kernel", "recurrent_kernel"):
                out[f"{name}/{short}"] = round(float(np.mean(weight.numpy() == 0)), 4)
    return out
