"""Fine-tuning helpers shared by the classifier compression methods."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np


def encode_labelled(clf, texts, labels):
    """(token ids, label indices) for ``clf``'s tokenizer and classes; clear error on unknown labels."""
    index = {label: i for i, label in enumerate(clf.classes)}
    unknown = sorted({str(l) for l in labels} - set(index))
    if unknown:
        raise ValueError(f"train_labels hold labels the model does not know: {unknown[:5]}; its labels: {clf.classes}")
    return clf.tokenizer.encode(texts), np.array([index[str(l)] for l in labels], np.int32)


def fine_tune(model, x, y, epochs, learning_rate, batch_size=32, callbacks=(), loss="sparse_categorical_crossentropy",
              seed=0, clipnorm=1.0):
    from kerasllm._tf import keras, no_autotune, tf

    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate, clipnorm=clipnorm), loss=loss)
    data = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    model.fit(no_autotune(data.batch(batch_size).prefetch(2)), epochs=epochs, callbacks=list(callbacks), verbose=0)
    return model


def with_model(clf, model, **config_changes):
    """A copy of the classifier ``clf`` holding ``model`` (same tokenizer, config updated)."""
    new = copy.copy(clf)
    new.config = dataclasses.replace(clf.config, **config_changes)
    new.model = model
    new._predict_fn = None
    return new


def refold(clf):
    """An equivalent classifier whose word embedding *is* the RNN input projection ``E @ W + b``
    (kernel = identity, bias = 0, recurrent layer frozen).

    The TFLite export folds ``E @ W + b`` into one table (``FoldedSimpleRNN``); compressing ``E``
    alone would not compress that table, and a pruned ``E`` gives a dense product. After refolding,
    the exported table is exactly the trained embedding, so its zeros and its quantization survive.
    Returns ``clf`` unchanged when the fold does not apply (LSTM, GRU, bidirectional, average).
    """
    from kerasllm._tf import tf
    from kerasllm.export.classifier import FoldedSimpleRNN
    from kerasllm.models.classifier import build_model

    if not FoldedSimpleRNN.applies(clf.config) or getattr(clf, "_refolded", False):
        return clf
    old = clf.model
    cell = old.get_layer("simple_rnn").cell
    units = int(cell.units)
    projected = (tf.matmul(old.get_layer("embedding").embeddings, cell.kernel) + cell.bias).numpy()
    new = with_model(clf, None, embedding_dim=units)
    new.model = build_model(new.config)
    for layer in new.model.layers:
        if layer.weights and layer.name not in ("embedding", "simple_rnn"):
            layer.set_weights(old.get_layer(layer.name).get_weights())
    new.model.get_layer("embedding").set_weights([projected])
    new.model.get_layer("simple_rnn").set_weights(
        [np.eye(units, dtype=np.float32), cell.recurrent_kernel.numpy(), np.zeros(units, np.float32)])
    new.model.get_layer("simple_rnn").trainable = False  # training it would unfold the table again
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
