"""Quantization-aware training of a classifier with tfmot, extended to the layers it skips.

tfmot's default 8-bit scheme quantizes Dense but not Embedding or the recurrent layers. The
classifier's size is in its two Embedding tables, so ``EmbeddingQuantizeConfig`` fake-quantizes
their tables with the int8 scheme TFLite uses for a gathered table (one scale per tensor). A
gather returns table rows unchanged, so no output quantizer is needed: that is what makes the
config sound. SimpleRNN/LSTM/GRU are not quantized in training (no sound config: their state
loops inside the layer); with the default SimpleRNN the recurrence is refolded into the
embedding table first (``training.refold``), so the table QAT trains is the table exported.

What ships is the quantization-aware graph itself (tfmot's way): an unrolled twin of the trained
QAT model, holding its weights and its learned quantizer ranges, is converted with
``Optimize.DEFAULT`` and no representative data, so every scale in the file comes from training
(nothing is recalibrated). The layers left float in training (the recurrence) stay float32 in
the file; ``info["float_layers"]`` names them.
"""
from __future__ import annotations

import numpy as np

from kerasllm.compression.training import (encode_labelled, fine_tune, own_model_scope, refold, restore_masks,
                                            soft_target_loss, soft_targets, with_model)


def _embedding_config_class():
    import tensorflow_model_optimization as tfmot

    quantizers = tfmot.quantization.keras.quantizers

    class EmbeddingQuantizeConfig(tfmot.quantization.keras.QuantizeConfig):
        """8-bit per-tensor fake quantization of an Embedding table; rows pass through a gather unchanged."""

        def get_weights_and_quantizers(self, layer):
            return [(layer.embeddings, quantizers.LastValueQuantizer(
                num_bits=8, per_axis=False, symmetric=False, narrow_range=False))]

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            layer.embeddings = quantize_weights[0]

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return []

        def get_config(self):
            return {}

    return EmbeddingQuantizeConfig


def _scheme():
    """tfmot's default 8-bit scheme also fake-quantizes the outputs of the layers that feed an
    annotated layer (here the Concatenate of integer n-gram ids before the table: an error), and
    rewrites the layout around them. This scheme quantizes exactly the annotated layers, each
    with the config it was annotated with."""
    import tensorflow_model_optimization as tfmot

    class NoLayoutTransform:
        def apply(self, model, layer_quantize_map):
            return model, layer_quantize_map

    class AnnotatedOnlyRegistry:
        def supports(self, layer):
            return False

        def get_quantize_config(self, layer):
            return None

    class AnnotatedOnlyScheme(tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme):
        def get_layout_transformer(self):
            return NoLayoutTransform()

        def get_quantize_registry(self):
            return AnnotatedOnlyRegistry()

    return AnnotatedOnlyScheme()


def quantize_aware_model(model):
    """(QAT model with the weights of ``model``, names of the quantized layers, names left float)."""
    import tensorflow_model_optimization as tfmot

    from kerasllm._tf import keras
    from kerasllm.models import classifier_layers as layers

    qk = tfmot.quantization.keras
    embedding_config = _embedding_config_class()
    default_registry = qk.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    quantized, skipped = [], []

    def annotate(layer):
        # the original layers: quantize_apply clones the model with its weights, ours stays untouched
        kind = type(layer).__name__
        if kind == "Embedding" and layer.trainable:
            quantized.append(layer.name)
            return qk.quantize_annotate_layer(layer, embedding_config())
        if kind == "Dense":
            quantized.append(layer.name)
            return qk.quantize_annotate_layer(layer, default_registry.get_quantize_config(layer))
        if layer.weights:
            skipped.append(layer.name)
        return layer

    annotated = keras.models.clone_model(model, clone_function=annotate)
    scope = {"EmbeddingQuantizeConfig": embedding_config,
             **{c.__name__: c for c in (layers.Columns, layers.HashedBigrams, layers.IdDropout, layers.MaskedMean,
                                        layers.IdfBag, layers.Recurrence)}}
    with qk.quantize_scope(scope), own_model_scope():
        qat = qk.quantize_apply(annotated, scheme=_scheme())
    return restore_masks(qat), quantized, skipped


def copy_from_qat(qat, plain):
    """Copy the trained float weights of a QAT model into ``plain`` (same architecture, no wrappers).

    A quantize wrapper swaps its layer's weight attributes for fake-quantized tensors, so the
    variables are found among the wrapper's weights by their short name (``kernel``, ``embeddings``).
    """
    layers = {getattr(l, "layer", l).name: l for l in qat.layers}
    for layer in plain.layers:
        if not layer.weights:
            continue
        source = layers[layer.name]
        by_name = {v.name.split("/")[-1].split(":")[0]: v for v in source.weights}
        layer.set_weights([by_name[w.name.split("/")[-1].split(":")[0]].numpy() for w in layer.weights])


def layer_weights(model):
    """{"layer name/i": array}: every weight of every layer (quantizer ranges included), keyed so
    that a model built with other trainable flags or unrolling receives them unchanged."""
    return {f"{layer.name}/{i}": w for layer in model.layers for i, w in enumerate(layer.get_weights())}


def attach_qat_model(clf, weights):
    """Give ``clf`` (the QAT-trained classifier, refolded) ``qat_model``: the unrolled QAT graph that
    converts to TFLite builtins, with ``weights`` (``layer_weights`` of the trained QAT model)."""
    from kerasllm.models.classifier import build_model

    twin, _, _ = quantize_aware_model(build_model(clf.config))
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights([weights[f"{layer.name}/{i}"] for i in range(len(layer.weights))])
    clf.qat_model = twin
    return clf


def qat_tflite_bytes(clf):
    """The QAT graph converted the tfmot way: ``Optimize.DEFAULT``, no representative dataset, so
    the converter keeps the trained ranges. One full-length signature ``predict_<max_length>``."""
    from kerasllm._tf import tf
    from kerasllm.export import tflite as tflite_lib
    from kerasllm.export.classifier import length_buckets
    from kerasllm.export.flatbuffer import rename_signatures
    from kerasllm.models.classifier import input_width

    model, width = clf.qat_model, input_width(clf.config)
    # the runtime fills rows as wide as the full length bucket says (words + char grams); the model
    # reads its own input width of them (the rest is padding when the bag path is off)
    n_words, n_grams = length_buckets(clf.config)[-1]
    spec = tf.TensorSpec([None, n_words + n_grams], tf.int32, name="token_ids")
    function = tf.function(lambda token_ids: {"probabilities": model(token_ids[:, :width], training=False)},
                           input_signature=[spec]).get_concrete_function()
    holder = tf.Module()
    holder.model = model
    flatbuffer = tflite_lib.convert([function], holder, quantization="dynamic")  # Optimize.DEFAULT only
    return rename_signatures(flatbuffer, {"serving_default": f"predict_{clf.config.max_length}"})


def qat_classifier(clf, texts, labels, epochs=2, learning_rate=None, keep_zeros=False, seed=0, temperature=2.0,
                   alpha=0.5):
    """Fine-tune ``clf`` with int8 fake quantization; returns ``(classifier, info)``; the classifier's
    ``qat_model`` is the trained quantization-aware graph that ``ptq.convert(..., qat=True)`` ships.

    ``keep_zeros=True`` (pruning-preserving QAT, for a pruned model): weights that are exactly
    zero stay zero, so the sparsity survives. ``info`` names the quantized and the float layers.
    The loss mixes the labels with ``clf``'s own softened probabilities (distillation, as for
    pruning): the quantized model learns to keep the function it quantizes.
    """
    from kerasllm._tf import keras

    clf = refold(clf)
    x, y = encode_labelled(clf, texts, labels)
    targets = soft_targets(clf.predict_proba(texts), y, temperature)
    qat, quantized, skipped = quantize_aware_model(clf.model)
    callbacks = []
    if keep_zeros:
        callbacks.append(_KeepZeros(qat, keras))
    fine_tune(qat, x, targets, epochs, learning_rate or clf.config.learning_rate / 3, clf.config.batch_size,
              callbacks=callbacks, seed=seed, loss=soft_target_loss(len(clf.classes), temperature, alpha))
    from kerasllm.models.classifier import build_model

    plain = build_model(clf.config)
    copy_from_qat(qat, plain)
    out = with_model(clf, plain)
    out._refolded = getattr(clf, "_refolded", False)
    attach_qat_model(out, layer_weights(qat))
    return out, {"quantized_layers": quantized, "float_layers": skipped,
                 "scheme": "int8 fake quantization in training (Embedding tables: per-tensor weights; Dense: "
                           f"tfmot default 8-bit), {epochs} epochs on labels + the model's own probabilities "
                           f"(T={temperature}, alpha={alpha}); shipped as the QAT graph with its trained ranges; "
                           f"float32 in training and in the file: {', '.join(skipped) or 'nothing'}"}


def _KeepZeros(model, keras):
    """A callback that re-applies each weight's zero pattern after every batch."""
    masks = []
    # the model's variables, not its layers': a quantize wrapper hides its layer's weights from that layer
    for weight in model.trainable_weights:
        value = weight.numpy()
        if value.ndim >= 2 and np.mean(value == 0) > 0.1:
            masks.append((weight, (value != 0).astype(value.dtype)))

    class KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            for weight, mask in masks:
                weight.assign(weight * mask)

    return KeepZeros()
