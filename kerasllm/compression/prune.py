"""Magnitude pruning (tfmot ``prune_low_magnitude``) of a trained classifier during fine-tuning."""
from __future__ import annotations

import numpy as np

from kerasllm.compression.training import (copy_weights, encode_labelled, fine_tune, refold, restore_masks,
                                            with_model)

PRUNABLE = ("Embedding", "Dense", "SimpleRNN", "LSTM", "GRU")


def prune_classifier(clf, texts, labels, sparsity=0.8, epochs=3, learning_rate=None, structured=False, seed=0):
    """Fine-tune ``clf`` while pruning its weights to ``sparsity`` (polynomial schedule), then strip
    the pruning wrappers. ``structured=True`` prunes 2 of every 4 weights instead (2:4 sparsity).

    Returns ``(pruned_classifier, info)``; ``info["sparsity"]`` is the fraction of zeros reached
    per pruned weight, ``info["pruned_layers"]`` the layers pruned.
    """
    import tensorflow_model_optimization as tfmot

    from kerasllm._tf import keras

    if not 0.0 < sparsity < 1.0:
        raise ValueError(f"sparsity must be in (0, 1), got {sparsity}")
    clf = refold(clf)
    x, y = encode_labelled(clf, texts, labels)
    steps = max(1, -(-len(x) // clf.config.batch_size)) * epochs
    if structured:
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
                    "target_sparsity": "2:4" if structured else float(sparsity)}


def weight_sparsity(model, layer_names):
    """{"layer/weight": fraction of exact zeros} for the kernels/tables of the named layers."""
    out = {}
    for name in layer_names:
        for weight in model.get_layer(name).weights:
            short = weight.name.split("/")[-1].split(":")[0]
            if short in ("embeddings", "kernel", "recurrent_kernel"):
                out[f"{name}/{short}"] = round(float(np.mean(weight.numpy() == 0)), 4)
    return out
