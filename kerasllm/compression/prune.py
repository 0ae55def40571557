"""Pruning of a trained classifier, then fine-tuning.

``pruning="units"`` (default) removes whole recurrent units: the exported file stores the folded
table ``E @ W + b`` (vocabulary x units) densely, so only fewer units make the file smaller.
``"magnitude"`` (tfmot ``prune_low_magnitude``) and ``"2:4"`` zero single weights: the zeros
are stored densely in a .tflite (TFLite's sparse encoding covers fully-connected/conv weights,
not the gathered tables that hold this model's bytes), so they shrink only the gzip size.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from kerasllm.compression.training import (copy_weights, encode_labelled, fine_tune, inner_layers, rebuild,
                                            refold, restore_masks)

PRUNABLE = ("Embedding", "Dense", "SimpleRNN", "LSTM", "GRU")
PRUNING = ("units", "magnitude", "2:4")


class MethodUnsupported(ValueError):
    """A compression method does not apply to this model (reported as a failed row, with the reason)."""


def sample_weight(clf, y):
    """Per-example class weights of ``clf``'s ``class_weight`` setting for label indices ``y`` (or None)."""
    from kerasllm.models.classifier import TextClassifier

    cw = TextClassifier._class_weights(clf.config.class_weight, clf.classes, [clf.classes[i] for i in y])
    return None if cw is None else cw[y]


def prune_units(clf, texts, labels, sparsity=0.8, epochs=3, learning_rate=None, seed=0, temperature=2.0,
                alpha=0.5):
    """Structured pruning: keep the ``1 - sparsity`` most important recurrent units (per direction),
    slice every weight that reads or writes them (the word table is first refolded into the
    recurrence's input projection, ``training.refold``, so it keeps only the columns of the kept
    units), fold the hashed-bigram rows of the n-gram table into the fewest (a power-of-two divisor
    of their count) that keep at least ``1 - sparsity`` of them, and fine-tune the smaller classifier.

    A unit's importance is the norm of its input projection (``E @ W + b`` over the vocabulary)
    times the norm of its output weights: what it can carry times how much the logits read it.
    Returns ``(pruned_classifier, info)``; ``clf`` is not modified.
    """
    from kerasllm._tf import keras
    from kerasllm.compression.training import rebuild
    from kerasllm.compression.training import soft_target_loss, soft_targets
    from kerasllm.models.classifier import fit_bag
    from kerasllm.models.classifier_layers import ClassifierParts, idf_weights, model_parts

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    cfg = clf.config
    if not (getattr(cfg, "recurrent", True) and cfg.architecture == "simple_rnn"):
        raise MethodUnsupported(f"unit pruning supports the SimpleRNN classifier, not {cfg.architecture!r} "
                                "(use pruning='magnitude')")
    folded_clf = refold(clf)  # embedding = E @ W + b, kernel = identity: columns are units
    parts = model_parts(folded_clf.model)
    units, directions = int(cfg.units), parts.rnn.directions
    keep_n = max(1, int(round(units * (1.0 - sparsity))))
    table = parts.embedding.get_weights()[0]  # [vocab, units * directions]
    out_kernel, out_bias = parts.rnn_logits.get_weights()  # rows: per pooling, [units * directions]
    pools = out_kernel.shape[0] // (units * directions)
    by_pool = out_kernel.reshape(pools, units * directions, -1)
    columns, recurrent = [], []
    for d, kernel in enumerate(parts.rnn.recurrent_kernels):
        span = slice(d * units, (d + 1) * units)
        importance = np.linalg.norm(table[:, span], axis=0) * np.linalg.norm(by_pool[:, span], axis=(0, 2))
        keep = np.sort(np.argsort(-importance, kind="stable")[:keep_n])
        columns.append(d * units + keep)
        recurrent.append(kernel.numpy()[np.ix_(keep, keep)])
    columns = np.concatenate(columns)
    width = len(columns)
    changes = {"units": keep_n, "embedding_dim": width}
    weights = {parts.embedding.name: [table[:, columns]],
               parts.rnn.name: [np.eye(width, dtype=np.float32), *recurrent, np.zeros(width, np.float32)],
               parts.rnn_logits.name: [by_pool[:, columns].reshape(pools * width, -1), out_bias]}
    x, y = encode_labelled(clf, texts, labels)
    buckets = new_buckets = int(cfg.bigram_buckets)
    if parts.bag:
        # the hashed-bigram rows: fold to a power-of-two divisor B' of B; hash % B' == (hash % B) % B',
        # so each new bucket holds the old buckets it merges, weighted by their idf (an unseen id
        # weighs 0, as in the model); the idf is recomputed on the training texts for the new ids
        while new_buckets % 2 == 0 and new_buckets // 2 >= max(256, buckets * (1.0 - sparsity)):
            new_buckets //= 2
        changes["bigram_buckets"] = new_buckets
        old = parts.table.get_weights()[0]
        head, tail = old[: len(old) - buckets], old[len(old) - buckets:]
        old_idf = getattr(cfg, "ngram_idf", None)
        if old_idf is None:
            merged, idf = tail.reshape(-1, new_buckets, tail.shape[1]).sum(0), None
        else:
            new_cfg = dataclasses.replace(folded_clf.config, bigram_buckets=new_buckets, ngram_idf=None)
            new_parts = ClassifierParts(new_cfg, len(clf.classes))
            grams = np.concatenate([new_parts.ngram_ids(x[i:i + 4096]).numpy() for i in range(0, len(x), 4096)])
            idf = idf_weights(grams, new_parts.bag_size)
            weighted = (tail * np.asarray(old_idf, np.float32)[len(old) - buckets:, None])
            merged = weighted.reshape(-1, new_buckets, tail.shape[1]).sum(0)
            new_idf = idf[len(head):, None]
            merged = np.where(new_idf > 0, merged / np.maximum(new_idf, 1e-6), 0.0).astype(np.float32)
            idf = np.concatenate([np.asarray(old_idf, np.float32)[: len(head)], idf[len(head):]])
            changes["ngram_idf"] = idf.tolist()
            if getattr(cfg, "bag_offset", None) is not None:
                # the teacher's bag was fitted by logistic regression: fit the folded bag the same way
                # (the merged rows above are only its starting point otherwise), then keep it frozen
                refit = fit_bag(grams, idf, y, len(clf.classes), cfg.bag_c, sample_weight(clf, y),
                                sublinear=bool(getattr(cfg, "bag_sublinear", None)))
                head, merged = refit[0][: len(head)], refit[0][len(head):]
                changes["bag_offset"] = refit[1]
        weights[parts.table.name] = [np.concatenate([head, merged])]
    keras.utils.set_random_seed(seed)
    out = rebuild(folded_clf, changes, weights)
    new_parts = model_parts(out.model)
    if parts.bag and changes.get("bag_offset") is not None:
        new_parts.table.trainable = False
    # fine-tune on the labels and the unpruned model's softened probabilities (distillation): the
    # pruned model learns the function it replaces, not only the labels (which it can overfit)
    targets = soft_targets(clf.predict_proba(texts), y, temperature)
    fine_tune(out.model, x, targets, epochs, learning_rate or cfg.learning_rate / 3, cfg.batch_size, seed=seed,
              loss=soft_target_loss(len(clf.classes), temperature, alpha))
    if parts.bag:
        new_parts.table.trainable = True
    out._refolded = False  # the identity kernel trains too
    return out, {"pruning": "units", "units": f"{units} -> {keep_n} per direction",
                 "fine_tuning": f"{epochs} epochs on labels + the unpruned model's probabilities (T={temperature}, "
                                f"alpha={alpha})" + (", bag refitted by logistic regression and frozen"
                                                     if changes.get("bag_offset") is not None else ""),
                 "removed_unit_fraction": round(1 - keep_n / units, 4),
                 "embedding_dim": f"{cfg.embedding_dim} -> {width} (the refolded input projection of the kept units)",
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
        if type(layer).__name__ in PRUNABLE and layer.trainable:
            pruned_names.append(layer.name)
            # a fresh copy: wrapping the layer itself would train (and change) the teacher's weights
            return tfmot.sparsity.keras.prune_low_magnitude(layer.__class__.from_config(layer.get_config()),
                                                            **params)
        copy = layer.__class__.from_config(layer.get_config())
        # the refolded recurrence stays frozen: its identity kernel keeps the table's zeros in the export
        copy.trainable = layer.trainable and not (type(layer).__name__ == "Recurrence" and getattr(clf, "_refolded", False))
        return copy

    wrapped = keras.models.clone_model(clf.model, clone_function=wrap)
    copy_weights(clf.model, wrapped)
    wrapped = restore_masks(wrapped)
    fine_tune(wrapped, x, y, epochs, learning_rate or clf.config.learning_rate / 3, clf.config.batch_size,
              callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], seed=seed)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    # back into a model of build_model's, so the export runs the model maths at every length bucket
    pruned = rebuild(clf, weights={n: inner_layers(stripped)[n].get_weights() for n in pruned_names})
    return pruned, {"pruned_layers": pruned_names, "sparsity": weight_sparsity(pruned.model, pruned_names),
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
