"""Text classifier: raw strings in, labels and probabilities out.

Default architecture ``simple_rnn``: Embedding -> SimpleRNN -> Dense softmax, with padding masked
and gradients clipped. A plain recurrent net on its own loses to TF-IDF + logistic regression on
topic-like tasks, so by default a linear bag-of-n-grams path (unigrams and hashed bigrams, the
fastText idea) adds its logits to the RNN's: the RNN reads word order, the bag path carries the
lexical evidence that logistic regression is good at. ``bag_of_ngrams=False`` gives the plain net.

The model takes int32 token ids [batch, max_length] (0 = padding) so one Keras graph serves
training, the SavedModel (behind an in-graph tokenizer) and TFLite (behind the Python tokenizer).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kerasllm.data import check_labelled
from kerasllm.text.word import WordTokenizer, check_texts

ARCHITECTURES = ("simple_rnn", "lstm", "gru")
POOLINGS = ("last", "average")
CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "weights.h5"
EXPORT_KERAS_DIR = "keras"  # in an export's version folder: the trainable model, for fine-tuning and compression


@dataclass
class ClassifierConfig:
    architecture: str = "simple_rnn"
    vocab_size: int = 20000
    max_length: int | None = None  # None: the 95th percentile of training lengths, within [16, 128]
    embedding_dim: int = 32
    units: int = 32
    bidirectional: bool = False
    pooling: str = "last"  # "last": final state; "average": masked mean of all states
    bag_of_ngrams: bool = True
    bigram_buckets: int = 2**15
    char_ngrams: int = 3  # character n-grams of each word in the bag path (0: none)
    max_char_grams: int | None = None  # None: 4 per word
    char_vocab_size: int = 20000
    bag_power: float = 0.5  # bag pooling: sum / count**power (1: mean, 0.5: L2-style)
    bag_learning_rate_multiplier: float = 10.0
    dropout: float = 0.5
    learning_rate: float = 3e-3
    clipnorm: float = 1.0
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.1
    class_weight: object = None  # None, "balanced" or {label: weight}
    labels: list = field(default_factory=list)

    def validate(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("vocab_size", "embedding_dim", "units", "batch_size", "max_epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5), got {self.validation_fraction}")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict label -> weight, got {self.class_weight!r}")
        return self


def input_width(config: ClassifierConfig, max_length=None, max_char_grams=None):
    words = config.max_length if max_length is None else max_length
    grams = config.max_char_grams if max_char_grams is None else max_char_grams
    return words + (grams if config.bag_of_ngrams and config.char_ngrams else 0)


def build_model(config: ClassifierConfig, unroll=False, max_length=None, max_char_grams=None, share=None):
    """ids [batch, width] -> class probabilities; the columns are the WordTokenizer's output:
    word ids, then (with char_ngrams) character n-gram ids.

    Export twins: ``share`` (a trained model) lends its layers, so the twins share its weights;
    ``unroll=True`` unrolls the recurrence (it then converts to TFLite builtins at any batch
    size and survives int8 conversion); ``max_length``/``max_char_grams`` give a shorter input,
    which gives the same answer for any text that fits, because padding is masked everywhere.
    """
    from kerasllm._tf import keras
    from kerasllm.models.classifier_layers import HashedBigrams, MaskedMean

    n_words = config.max_length if max_length is None else max_length
    layer = _layer_factory(share)
    n_classes = len(config.labels)
    ids = keras.Input(shape=(input_width(config, max_length, max_char_grams),), dtype="int32", name="token_ids")
    words = ids
    if ids.shape[1] > n_words:
        words = keras.layers.Lambda(lambda t: t[:, :n_words], name="word_ids")(ids)
    x = layer("embedding", lambda name: keras.layers.Embedding(config.vocab_size, config.embedding_dim,
                                                               mask_zero=True, name=name))(words)
    x = keras.layers.Dropout(config.dropout, name="embedding_dropout")(x)
    h = _recurrent(config, unroll, share)(x)
    if config.pooling == "average":
        h = MaskedMean(name="average_pooling")([h, words])
    h = keras.layers.Dropout(config.dropout, name="rnn_dropout")(h)
    logits = layer("rnn_logits", lambda name: keras.layers.Dense(n_classes, name=name))(h)
    if config.bag_of_ngrams:
        # ids already holds words and character n-grams (ids below total_vocab); bigrams go after them
        total_vocab = config.vocab_size + (config.char_vocab_size if config.char_ngrams else 0)
        bigrams = HashedBigrams(config.vocab_size, config.bigram_buckets, offset=total_vocab, name="bigrams")(words)
        grams = keras.layers.Concatenate(axis=1, name="ngrams")([ids, bigrams])
        table = layer("ngram_logits_table",
                      lambda name: keras.layers.Embedding(total_vocab + config.bigram_buckets, n_classes, name=name))
        bag = MaskedMean(power=config.bag_power, name="bag_of_ngrams")([table(grams), grams])
        # Adam moves each weight by about the learning rate per step whatever its gradient, so the
        # sparse bag path would learn far slower than the RNN; scaling its output speeds it up.
        bag = keras.layers.Rescaling(config.bag_learning_rate_multiplier, name="bag_scale")(bag)
        logits = keras.layers.Add(name="logits")([logits, bag])
    probs = keras.layers.Activation("softmax", dtype="float32", name="probabilities")(logits)
    return keras.Model(ids, probs, name="text_classifier")


def _layer_factory(share):
    """layer(name, make): the shared model's layer of that name, else a new one."""
    return (lambda name, make: share.get_layer(name)) if share is not None else (lambda name, make: make(name))


def _recurrent(config, unroll, share):
    from kerasllm._tf import keras

    kinds = {"simple_rnn": keras.layers.SimpleRNN, "lstm": keras.layers.LSTM, "gru": keras.layers.GRU}
    sequences = config.pooling == "average"
    if share is None:
        rnn = kinds[config.architecture](config.units, return_sequences=sequences, unroll=unroll,
                                         name=config.architecture)
        return keras.layers.Bidirectional(rnn, name="bidirectional") if config.bidirectional else rnn
    # Wrap the trained cells in new RNN layers: same weights, possibly unrolled. (Not through
    # keras' Bidirectional, which rebuilds its layers from config and so would make new weights.)
    trained = share.get_layer("bidirectional" if config.bidirectional else config.architecture)
    if not config.bidirectional:
        return keras.layers.RNN(trained.cell, return_sequences=sequences, unroll=unroll)
    forward = keras.layers.RNN(trained.forward_layer.cell, return_sequences=sequences, unroll=unroll)
    backward = keras.layers.RNN(trained.backward_layer.cell, return_sequences=sequences, unroll=unroll,
                                go_backwards=True)

    def both_ways(x):
        back = backward(x)
        if sequences:  # keras' Bidirectional puts the backward outputs back in time order
            back = keras.layers.Lambda(lambda t: t[:, ::-1])(back)
        return keras.layers.Concatenate()([forward(x), back])

    return both_ways

class TextClassifier:
    """Estimator: ``fit(texts, labels)``, ``predict``, ``predict_proba``, ``evaluate``, ``save``, export."""

    kind = "classifier"

    def __init__(self, **hparams):
        self.config = ClassifierConfig(**hparams).validate()
        self.tokenizer = None
        self.model = None
        self.history = {}
        self._predict_fn = None

    @property
    def classes(self):
        return list(self.config.labels)

    # -- training -----------------------------------------------------------------------------
    def fit(self, texts, labels, validation=None, epochs=None, seed=0, verbose=1, strategy=None):
        """Train on ``texts``/``labels``. ``strategy``: None, "mirrored", "multi_worker" or a
        ``tf.distribute.Strategy`` (data-parallel; the batch size stays the global batch size)."""
        from kerasllm import distribute
        from kerasllm._tf import keras, no_autotune, tf

        texts, labels = check_labelled(texts, labels)
        if validation is not None:
            val_texts, val_labels = check_labelled(*validation)
        else:
            texts, labels, val_texts, val_labels = _holdout(texts, labels, self.config.validation_fraction, seed)
        cfg = self.config
        cfg.labels = sorted(set(labels))
        unknown = sorted(set(val_labels) - set(cfg.labels))
        if unknown:
            raise ValueError(f"validation labels {unknown} do not occur in the training labels {cfg.labels}")
        if cfg.max_length is None:
            lengths = WordTokenizer().lengths(texts)
            cfg.max_length = int(np.clip(np.percentile(lengths, 95), 16, 128))
        char_ngrams = cfg.char_ngrams if cfg.bag_of_ngrams else 0
        self.tokenizer = WordTokenizer(max_length=cfg.max_length, char_ngrams=char_ngrams,
                                       max_char_grams=cfg.max_char_grams)
        self.tokenizer.fit(texts, max_tokens=cfg.vocab_size, max_char_tokens=cfg.char_vocab_size)
        cfg.vocab_size = self.tokenizer.vocab_size
        cfg.char_vocab_size = len(self.tokenizer.char_vocabulary)
        cfg.max_char_grams = self.tokenizer.max_char_grams

        keras.utils.set_random_seed(seed)
        strategy = distribute.get_strategy(strategy)
        with distribute.scope(strategy):
            self.model = build_model(cfg)
            self.model.compile(
                optimizer=keras.optimizers.Adam(cfg.learning_rate, clipnorm=cfg.clipnorm),
                loss="sparse_categorical_crossentropy",
                metrics=["accuracy"],
            )
        index = {label: i for i, label in enumerate(cfg.labels)}
        x, y = self.tokenizer.encode(texts), np.array([index[l] for l in labels], np.int32)
        vx, vy = self.tokenizer.encode(val_texts), np.array([index[l] for l in val_labels], np.int32)
        train = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        train = no_autotune(train.batch(cfg.batch_size).prefetch(2))
        val = no_autotune(tf.data.Dataset.from_tensor_slices((vx, vy)).batch(256))
        early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
        history = self.model.fit(
            train, validation_data=val, epochs=epochs or cfg.max_epochs, callbacks=[early] if epochs is None else [],
            class_weight=self._class_weights(y), verbose=verbose,
        )
        self.history = {k: [float(v) for v in vs] for k, vs in history.history.items()}
        self._predict_fn = None
        return self

    def _class_weights(self, y):
        cw = self.config.class_weight
        if cw is None:
            return None
        if cw == "balanced":
            counts = np.bincount(y, minlength=len(self.classes)).astype(float)
            return {i: len(y) / (len(counts) * c) for i, c in enumerate(counts) if c > 0}
        missing = set(cw) - set(self.classes)
        if missing:
            raise ValueError(f"class_weight names unknown labels {sorted(missing)}; labels are {self.classes}")
        return {self.classes.index(k): float(v) for k, v in cw.items()}

    # -- inference ----------------------------------------------------------------------------
    def _require_model(self):
        if self.model is None:
            raise RuntimeError("the classifier is not trained: call fit(texts, labels) first")

    def predict_proba(self, texts):
        self._require_model()
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32)
        if self._predict_fn is None:
            from kerasllm._tf import tf

            # A direct call in a graph function: model.predict costs ~80 ms of tf.data set-up per call.
            self._predict_fn = tf.function(
                lambda ids: self.model(ids, training=False),
                input_signature=[tf.TensorSpec([None, input_width(self.config)], tf.int32)],
            )
        ids = self.tokenizer.encode(texts)
        return np.concatenate([self._predict_fn(ids[i:i + 1024]).numpy() for i in range(0, len(ids), 1024)])

    def predict(self, texts):
        probs = self.predict_proba(texts)
        return [self.classes[i] for i in probs.argmax(axis=1)]

    def evaluate(self, texts, labels):
        texts = check_texts(texts)
        labels = [str(l) for l in labels]
        if len(texts) != len(labels):
            raise ValueError(f"texts and labels differ in length: {len(texts)} texts, {len(labels)} labels")
        return classification_metrics(labels, self.predict(texts), self.classes)

    # -- persistence --------------------------------------------------------------------------
    def save(self, path):
        """Save config, tokenizer and weights to the folder ``path`` (replaced atomically)."""
        from kerasllm.export.layout import replace_dir

        self._require_model()

        def write(tmp):
            with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
                json.dump({"format": "kerasllm.classifier/1", "config": asdict(self.config),
                           "tokenizer": self.tokenizer.get_config(), "history": self.history}, f, ensure_ascii=False)
            self.model.save_weights(str(tmp / WEIGHTS_FILE))

        return replace_dir(path, write, CONFIG_FILE, "classifier")

    @classmethod
    def load(cls, path):
        path = Path(path)
        try:
            with open(path / CONFIG_FILE, encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path} is not a saved classifier: {CONFIG_FILE} is missing") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path / CONFIG_FILE} is damaged: {e}") from None
        if saved.get("format") != "kerasllm.classifier/1":
            raise ValueError(f"{path} holds {saved.get('format')!r}, not a kerasllm classifier")
        clf = cls(**saved["config"])
        clf.tokenizer = WordTokenizer.from_config(saved["tokenizer"])
        clf.history = saved.get("history", {})
        clf.model = build_model(clf.config)
        clf.model.load_weights(str(path / WEIGHTS_FILE))
        return clf

    # -- export -------------------------------------------------------------------------------
    def export_artifacts(self, directory, formats, quantization=None, representative_texts=None):
        """SavedModel (raw strings in, XLA-compiled) at the top of ``directory``; ``model.tflite`` beside it."""
        from kerasllm.export.classifier import write_saved_model, write_tflite

        self._require_model()
        extra = {"labels": self.classes, "max_length": self.config.max_length, "keras": EXPORT_KERAS_DIR}
        self.save(Path(directory) / EXPORT_KERAS_DIR)
        if "saved_model" in formats:
            write_saved_model(self, directory)
        if "tflite" in formats:
            extra["tflite_quantization"] = write_tflite(self, directory, quantization, representative_texts)
        return extra


def load_classifier(path):
    """Load a classifier saved with ``TextClassifier.save``."""
    return TextClassifier.load(path)


def _holdout(texts, labels, fraction, seed):
    """Stratified hold-out for early stopping (plain random when a class is too small to stratify)."""
    from collections import Counter

    from sklearn.model_selection import train_test_split

    stratify = labels if min(Counter(labels).values()) >= 2 else None
    n_val = max(1, int(round(len(texts) * fraction)))
    if stratify is not None and n_val < len(set(labels)):
        stratify = None
    a, b, c, d = train_test_split(texts, labels, test_size=n_val, random_state=seed, stratify=stratify)
    return list(a), list(c), list(b), list(d)


def classification_metrics(y_true, y_pred, classes):
    """accuracy, macro_f1, per-class precision/recall/f1/support and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    classes = list(classes)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)),
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
        "labels": classes,
    }
