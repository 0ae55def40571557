"""Fine-tuning helpers shared by the classifier compression methods."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np


def encode_labelled(clf, texts, labels):
    """(token ids, label indices) for ``clf``'s tokenizer and classes. Labels keep their type (str or
    int, as the classifier's ``check_labels`` says); clear error on labels the model does not know."""
    from kerasllm.models.classifier import check_labels

    labels = check_labels(labels, len(texts), "train_labels")
    index = {label: i for i, label in enumerate(clf.classes)}
    unknown = sorted({l for l in labels if l not in index}, key=repr)
    if unknown:
        raise ValueError(f"train_labels hold labels the model does not know: {unknown[:5]}; its labels: {clf.classes}")
    return clf.tokenizer.encode(texts), np.array([index[l] for l in labels], np.int32)


def fine_tune(model, x, y, epochs, learning_rate, batch_size=32, callbacks=(), loss="sparse_categorical_crossentropy",
              seed=0, clipnorm=1.0):
    from kerasllm._tf import keras, no_autotune, tf

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=clipnorm), loss=loss)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    model.fit(no_autotune(data.batch(batch_size).prefetch(2)), epochs=epochs, callbacks=list(callbacks), verbose=0)
    return model


def soft_targets(teacher_probs, y, temperature=2.0):
    """[one-hot labels | teacher probabilities softened by ``temperature``]: the targets of
    ``soft_target_loss`` (both halves in one array, so Keras passes them as one ``y``)."""
    n = teacher_probs.shape[1]
    soft = np.asarray(teacher_probs, np.float64) ** (1.0 / temperature)
    soft = (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)
    return np.concatenate([np.eye(n, dtype=np.float32)[np.asarray(y)], soft], axis=1)


def soft_target_loss(n_classes, temperature=2.0, alpha=0.5):
    """Knowledge distillation (Hinton et al., 2015) for a model that outputs probabilities: ``alpha``
    x cross-entropy with the labels + (1 - alpha) x T² x cross-entropy with the teacher's softened
    probabilities (targets from ``soft_targets``)."""
    from kerasllm._tf import tf

    def loss(target, probs):
        hard, teacher_soft = target[:, :n_classes], target[:, n_classes:]
        log_p = tf.math.log(tf.clip_by_value(probs, 1e-7, 1.0))
        log_soft = tf.nn.log_softmax(log_p / temperature)  # log p is the logits up to a constant
        hard_loss = -tf.reduce_sum(hard * log_p, axis=1)
        soft_loss = -tf.reduce_sum(teacher_soft * log_soft, axis=1)
        return alpha * hard_loss + (1.0 - alpha) * temperature ** 2 * soft_loss

    return loss


def with_model(clf, model, **config_changes):
    """A copy of the classifier ``clf`` holding ``model`` (same tokenizer, config updated)."""
    new = copy.copy(clf)
    new.config = dataclasses.replace(clf.config, **config_changes)
    new.model = model
    new._predict_fn = None
    return new


def rebuild(clf, changes=None, weights=None):
    """A new classifier like ``clf`` with ``changes`` to its config, its model built by ``build_model``
    (so the export's model maths apply) holding ``clf``'s weights, except ``weights``: {layer name:
    weights} for layers whose shapes changed. ``clf`` and its model are never modified."""
    from kerasllm.models.classifier import build_model

    new = with_model(clf, None, **(changes or {}))
    new.model = build_model(new.config)
    weights = weights or {}
    old = {layer.name: layer for layer in clf.model.layers}
    for layer in new.model.layers:
        if layer.name in weights:
            layer.set_weights(weights[layer.name])
        elif layer.weights:
            layer.set_weights(old[layer.name].get_weights())
    new._refolded = getattr(clf, "_refolded", False)
    return new


def refold(clf):
    """An equivalent classifier whose word embedding *is* the SimpleRNN input projection
    ``E @ W + b`` (``ClassifierParts.fold``; kernel = identity, bias = 0).

    The export gathers rows of that folded table; compressing ``E`` alone would not compress it.
    After refolding, the exported table is exactly the trained embedding, so its zeros, its
    quantization and its sliced columns survive. ``clf`` is unchanged; returned as it is when the
    fold does not apply (LSTM, GRU, no recurrent path) or was done already.
    """
    from kerasllm.models.classifier_layers import model_parts

    parts = model_parts(clf.model)
    folded = None if parts is None or getattr(clf, "_refolded", False) else parts.fold()
    if folded is None:
        return clf
    width = int(folded.shape[1])
    recurrent = [w.numpy() for w in parts.rnn.recurrent_kernels]
    new = rebuild(clf, {"embedding_dim": width}, {
        parts.embedding.name: [folded.numpy()],
        parts.rnn.name: [np.eye(width, dtype=np.float32), *recurrent, np.zeros(width, np.float32)]})
    new._refolded = True
    return new


def inner_layers(model):
    """{original layer name: layer} looking through tfmot wrappers (pruning, quantization)."""
    out = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        out[inner.name if inner is not None else layer.name] = inner if inner is not None else layer
    return out


def copy_weights(source, target):
    """Copy each layer's weights from ``source`` to the layer of the same name in ``target``,
    through tfmot wrappers on either side (their masks and quantizer ranges are left as they are)."""
    targets = inner_layers(target)
    for name, layer in inner_layers(source).items():
        if layer.weights:
            targets[name].set_weights(layer.get_weights())


def restore_masks(model):
    """``model`` rewired so tfmot wrappers pass on their inner layer's mask.

    tfmot's pruning and quantization wrappers drop Keras masks, so a wrapped ``Embedding(mask_zero)``
    would let the recurrence read padding during fine-tuning: a different function from the one
    exported. The wrappers get the inner layer's ``compute_mask`` and the graph is rebuilt from the
    same layer objects (weights shared).
    """
    from kerasllm._tf import keras

    changed = False
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if inner is not None and getattr(inner, "supports_masking", False) and not layer.supports_masking:
            layer.compute_mask = lambda inputs, mask=None, inner=inner: inner.compute_mask(inputs, mask)
            layer._supports_masking = True
            changed = True
    return keras.models.clone_model(model, clone_function=lambda layer: layer) if changed else model


def own_model_scope():
    """Allow Lambda layers while tfmot re-serializes our own model: the classifier slices its word
    ids with a Lambda, which Keras refuses to deserialize by default (it cannot know it is ours)."""
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    return SafeModeScope(False)
