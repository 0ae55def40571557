"""Text classifier: raw strings in, labels and probabilities out.

Default: a two-way SimpleRNN over word embeddings, max- and mean-pooled over time, whose logits
add to those of a linear bag of n-grams (words, hashed word bigrams, character n-grams). The bag
is fitted first (logistic regression); the recurrent path then trains on its own loss
(``sum_loss_weight=0``), its embedding started from the training texts' LSA word vectors
(``embedding_init="svd"``), with an average of its weights (``ema``, spanning an epoch at most),
early-stopped on a held-out split. The weight of its logits in the sum (and their share of the
class prior, which both paths hold, taken off once) is chosen on that split with a free
temperature (0 included), so the sum is an ensemble of two models that read text differently.
Then (``refit``) everything is learned again from all texts, the recurrent path for the epochs
early stopping chose: the default's bag path is exactly the bag alone. ``bag_of_ngrams=False``
gives the recurrent path alone, ``recurrent=False`` the bag alone. The maths lives in
``classifier_layers``.

``TextClassifier`` is a scikit-learn estimator: its settings are its constructor arguments
(``get_params``/``set_params``, ``sklearn.base.clone``), and what ``fit`` learns lives in
attributes ending in ``_`` (``classes_``, ``config_``, ``tokenizer_``, ``model_``, ``history_``).
A second ``fit`` starts again from the settings.

The Keras model takes int32 token ids [batch, width] (0 = padding) so one graph serves training,
the SavedModel (behind an in-graph tokenizer) and TFLite (behind the Python tokenizer).
"""
from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from kerasllm.models.classifier_layers import KINDS as ARCHITECTURES
from kerasllm.models.classifier_layers import (POOLINGS, ClassifierParts, build_model, idf_weights,  # noqa: F401
                                               input_width, model_parts, paths_model, training_model)
from kerasllm.text.word import WordTokenizer, check_texts

CONFIG_FILE = "classifier.json"
WEIGHTS_FILE = "weights.h5"
FORMAT = "kerasllm.classifier/2"
EXPORT_KERAS_DIR = "keras"  # in an export's version folder: the trainable model, for fine-tuning and compression
BAG_SCALINGS = ("auto", "nb", "none")  # ClassifierConfig.bag_scaling
BAG_SCALING_FOLDS = 3  # cross-validation folds that choose it ("auto")
BAG_SCALING_MIN_TEXTS = 500  # fewer training texts keep the bag unscaled ("auto")
BAG_TFS = ("auto", "sublinear", "raw")  # ClassifierConfig.bag_tf


@dataclass
class ClassifierConfig:
    """Settings (every field but ``labels``); a fitted model's ``config_`` is a copy with the
    learned sizes filled in (vocab_size, max_length, char_vocab_size, max_char_grams, labels)."""

    architecture: str = "simple_rnn"
    vocab_size: int = 20000
    max_length: int | None = None  # None: default_max_length(training texts)
    recurrent_length: int | None = None  # words the recurrent path reads, the first ones; None:
    # RECURRENT_LENGTH (at most max_length). The bag of n-grams reads all max_length.
    embedding_dim: int = 64
    embedding_init: str = "svd"  # "svd": word vectors from the training texts' TF-IDF matrix (LSA); "random"
    units: int = 32  # per direction
    bidirectional: bool = True
    pooling: str = "max_mean"  # "last", "average", "max" or "max_mean" over the real words
    recurrent: bool = True  # the recurrent path (False: the bag of n-grams alone)
    bag_of_ngrams: bool = True
    bigram_buckets: int = 2**15
    char_ngrams: int = 3  # character n-grams of each word in the bag path (0: none)
    max_char_grams: int | None = None  # None: 4 per word
    char_vocab_size: int = 20000
    bag_fit: str = "logistic"  # "logistic": the bag is fitted first (logistic regression, C=bag_c), then
    # frozen while the recurrent path trains; "joint": both train together by gradient descent
    bag_c: float = 10.0  # per independent example: texts that repeat each other count once (effective_bag_c)
    bag_scaling: str = "auto"  # "nb": each bag feature scaled by its naive-Bayes log-count ratio (NBSVM,
    # nb_ratios) before the fit, "none": not; "auto": "nb" where it gains in cross-validation (choose_bag_features)
    bag_tf: str = "auto"  # an n-gram's term frequency in the bag: "sublinear" 1 + ln(count in the text)
    # (TF-IDF's sublinear_tf), "raw": the count; "auto": sublinear unless raw counts gain in the scaling's
    # cross-validation (choose_bag_features)
    bag_learning_rate_multiplier: float = 10.0  # "joint" only
    bag_dropout: float = 0.0  # share of n-gram ids dropped in training
    embedding_dropout: float = 0.2  # share of words dropped from the recurrent path in training
    dropout: float = 0.5  # on the pooled recurrent features
    path_loss_weight: float = 0.5  # weight of each path's own loss beside the sum's
    sum_loss_weight: float = 0.0  # weight of the summed logits' loss (0: each path trains on its own loss)
    learning_rate: float = 3e-3
    ema: float = 0.995  # > 0: validate and keep an exponential moving average of the weights (this momentum)
    refit: bool = True  # after early stopping on the automatic split, train again on all texts that long
    recurrent_weight: float | None = None  # the recurrent logits' weight in the sum with a fitted bag; None:
    # chosen on the validation split (choose_recurrent_mix: 0 on fewer than MIN_GAIN_TEXTS texts)
    clipnorm: float = 1.0
    batch_size: int = 32
    max_epochs: int = 30
    patience: int = 3
    validation_fraction: float = 0.1
    class_weight: object = None  # None, "balanced" or {label: weight}
    labels: list = field(default_factory=list)  # learned
    ngram_idf: list | None = None  # learned: the bag path's idf weight per n-gram id
    bag_offset: list | None = None  # learned: the fitted bag's intercept per class
    recurrent_scale: float = 1.0  # learned: the recurrent logits' weight in the sum (chosen on validation)
    recurrent_offset: list | None = None  # learned: -recurrent_scale * log(class prior), added to them
    bag_nb: bool | None = None  # learned: the fitted bag's features were scaled by nb_ratios
    bag_sublinear: bool | None = None  # learned: the bag's term frequency is sublinear (None: raw, as
    # every model saved before bag_tf existed)

    def validate(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("vocab_size", "embedding_dim", "units", "batch_size", "max_epochs", "bigram_buckets"):
            value = getattr(self, name)
            if not isinstance(value, Integral) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.max_length is not None and (not isinstance(self.max_length, Integral) or self.max_length < 2):
            raise ValueError(f"max_length must be None or an integer >= 2, got {self.max_length!r}")
        if self.recurrent_length is not None and (isinstance(self.recurrent_length, bool) or not isinstance(
                self.recurrent_length, Integral) or self.recurrent_length < 1):
            raise ValueError(f"recurrent_length must be None or a positive integer, got {self.recurrent_length!r}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema!r}")
        for name in ("dropout", "embedding_dropout", "bag_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ValueError(f"validation_fraction must be in (0, 0.5), got {self.validation_fraction}")
        if self.embedding_init not in ("svd", "random"):
            raise ValueError(f"embedding_init must be 'svd' or 'random', got {self.embedding_init!r}")
        if self.bag_scaling not in BAG_SCALINGS:
            raise ValueError(f"bag_scaling must be one of {BAG_SCALINGS}, got {self.bag_scaling!r}")
        if self.bag_tf not in BAG_TFS:
            raise ValueError(f"bag_tf must be one of {BAG_TFS}, got {self.bag_tf!r}")
        if self.bag_fit not in ("logistic", "joint"):
            raise ValueError(f"bag_fit must be 'logistic' or 'joint', got {self.bag_fit!r}")
        if not self.sum_loss_weight >= 0 or not self.path_loss_weight >= 0:
            raise ValueError(f"sum_loss_weight and path_loss_weight must be >= 0, got {self.sum_loss_weight!r}, "
                             f"{self.path_loss_weight!r}")
        weight = self.recurrent_weight
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, Real) or not 0 <= weight < np.inf):
            raise ValueError(f"recurrent_weight must be None (chosen on validation) or a number >= 0, "
                             f"got {self.recurrent_weight!r}")
        if not self.bag_c > 0:
            raise ValueError(f"bag_c must be a positive number, got {self.bag_c!r}")
        if not (self.recurrent or self.bag_of_ngrams):
            raise ValueError("recurrent and bag_of_ngrams are both False: the classifier needs at least one path")
        if not (self.class_weight is None or self.class_weight == "balanced" or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight must be None, 'balanced' or a dict label -> weight, got {self.class_weight!r}")
        return self


LEARNED = ("labels", "ngram_idf", "bag_offset", "recurrent_scale", "recurrent_offset", "bag_nb", "bag_sublinear")
SETTINGS = tuple(f.name for f in dataclasses.fields(ClassifierConfig) if f.name not in LEARNED)


def check_labels(labels, n_texts, name="labels"):
    """Labels as a list of str or of int (numpy scalars become Python ones); never None, never mixed."""
    if labels is None:
        raise ValueError(f"{name} are required to train a classifier")
    if isinstance(labels, (str, bytes)):
        raise TypeError(f"{name} must be a list of labels, got a single {type(labels).__name__}")
    labels = list(labels)
    if len(labels) != n_texts:
        raise ValueError(f"texts and {name} differ in length: {n_texts} texts, {len(labels)} labels")
    out = []
    for i, label in enumerate(labels):
        if isinstance(label, (str, np.str_)):
            out.append(str(label))
        elif isinstance(label, (Integral, np.integer)) and not isinstance(label, (bool, np.bool_)):
            out.append(int(label))
        else:
            raise TypeError(f"{name}[{i}] is {label!r} ({type(label).__name__}); labels must be str or int")
    kinds = {type(label) for label in out}
    if len(kinds) > 1:
        raise TypeError(f"{name} mix str and int (e.g. {next(l for l in out if isinstance(l, str))!r} and "
                        f"{next(l for l in out if isinstance(l, int))!r}); use one type")
    return out


class TextClassifier(ClassifierMixin, BaseEstimator):
    """Estimator: ``fit(texts, labels)``, ``predict``, ``predict_proba``, ``evaluate``, ``score``,
    ``save``, export. Keyword arguments: any ``ClassifierConfig`` setting."""

    kind = "classifier"

    def __init__(self, **params):
        unknown = sorted(set(params) - set(SETTINGS))
        if unknown:
            raise TypeError(f"unknown TextClassifier settings {unknown}; known: {', '.join(SETTINGS)}")
        defaults = ClassifierConfig()
        for name in SETTINGS:
            setattr(self, name, params.get(name, getattr(defaults, name)))

    # scikit-learn reads the settings from the constructor's signature: the dataclass's fields
    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                             default=f.default if f.default is not dataclasses.MISSING else None)
           for f in dataclasses.fields(ClassifierConfig) if f.name not in LEARNED])

    def settings(self):
        """The settings as a validated ``ClassifierConfig`` (no labels)."""
        return ClassifierConfig(**{name: getattr(self, name) for name in SETTINGS}).validate()

    # Names older code (compression) uses for the learned state; None (config: the settings) before fit.
    config = property(lambda self: getattr(self, "config_", None) or ClassifierConfig(**self.get_params()),
                      lambda self, v: setattr(self, "config_", v))
    tokenizer = property(lambda self: getattr(self, "tokenizer_", None), lambda self, v: setattr(self, "tokenizer_", v))
    model = property(lambda self: getattr(self, "model_", None), lambda self, v: setattr(self, "model_", v))
    history = property(lambda self: getattr(self, "history_", {}))

    @property
    def classes(self):
        return list(self._fitted("config_").labels)

    @property
    def classes_(self):
        return self.classes

    def _fitted(self, name):
        from sklearn.exceptions import NotFittedError  # a ValueError and an AttributeError

        value = getattr(self, name, None)
        if value is None:
            raise NotFittedError("the classifier is not trained: call fit(texts, labels) first")
        return value

    def __sklearn_is_fitted__(self):
        return getattr(self, "model_", None) is not None

    # -- training -----------------------------------------------------------------------------
    def fit(self, texts, labels, validation=None, epochs=None, seed=0, verbose=0, strategy=None):
        """Train on ``texts``/``labels`` (str or int labels). ``validation``: (texts, labels) for early
        stopping, else a stratified share of the data is held out (classes with one example stay in
        training) and, with ``refit`` (default), everything is learned again from all texts
        (vocabulary, n-gram weights, bag, recurrent path for the epochs early stopping chose; the
        recurrent logits' weight chosen on the held-out share is kept); with fixed ``epochs`` and no
        ``validation`` every example trains.
        ``strategy``: None, "mirrored", "multi_worker" or a ``tf.distribute.Strategy``."""
        from kerasllm import distribute

        cfg = self.settings()
        texts = check_texts(texts)
        labels = check_labels(labels, len(texts))
        if not texts:
            raise ValueError("no training data: texts is empty")
        classes = sorted(set(labels))
        if len(classes) < 2:
            raise ValueError(f"need at least two classes to train a classifier, got only {classes}")
        ours = False  # the validation texts are held out of ``texts``
        groups = containment_groups(texts)  # texts that repeat each other: the split and the bag's C
        train_groups = groups
        if validation is not None:
            val_texts = check_texts(validation[0], "validation texts")
            val_labels = check_labels(validation[1], len(val_texts), "validation labels")
            unknown = sorted(set(val_labels) - set(classes), key=str)
            if unknown:
                raise ValueError(f"validation labels {unknown} do not occur in the training labels {classes}")
            train_texts, train_labels = texts, labels
        elif epochs is None and (cfg.recurrent or cfg.bag_fit == "joint"):  # a fitted bag alone needs none
            train_idx, val_idx = holdout(labels, cfg.validation_fraction, seed, groups)
            val_texts, val_labels = [texts[i] for i in val_idx], [labels[i] for i in val_idx]
            train_texts, train_labels = [texts[i] for i in train_idx], [labels[i] for i in train_idx]
            train_groups = groups[train_idx]  # whole groups: each one's texts are all on one side
            ours = bool(val_texts)
        else:
            train_texts, train_labels, val_texts, val_labels = texts, labels, [], []
        strategy = distribute.get_strategy(strategy)
        learned, tokenizer, model, history, best = self._train(
            cfg, classes, train_texts, train_labels, train_groups, val_texts, val_labels, epochs, seed, verbose,
            strategy)
        if ours and cfg.refit and best:
            # the held-out texts were ours: learn everything again from all of them, so the bag is
            # the one the same settings give without a split, and the recurrent path trains as long
            # as early stopping chose
            learned, tokenizer, model, again, _ = self._train(
                cfg, classes, texts, labels, groups, [], [], best, seed, verbose, strategy,
                (learned.recurrent_scale, learned.recurrent_offset), (learned.bag_nb, learned.bag_sublinear))
            history["refit_epochs"] = [best]
            history.update({k: v for k, v in again.items() if k == "bag_c"})  # the final bag's C
        elif ours and learned.bag_of_ngrams and learned.bag_offset is not None:
            # no refit: the recurrent path keeps its training, the fitted bag learns from all texts
            parts = model_parts(model)
            y_all = np.array([classes.index(l) for l in labels], np.int32)
            grams = np.asarray(parts.ngram_ids(tokenizer.encode(texts)))
            cw = self._class_weights(cfg.class_weight, classes, labels)
            bag_c = effective_bag_c(cfg.bag_c, groups)
            table, offset = fit_bag(grams, np.asarray(learned.ngram_idf, np.float32), y_all, len(classes), bag_c,
                                    None if cw is None else cw[y_all], nb=learned.bag_nb,
                                    sublinear=learned.bag_sublinear)
            history["bag_c"] = [bag_c]
            parts.table.set_weights([table])
            learned.bag_offset = parts.bag_scale.offset = offset
        self.config_, self.tokenizer_, self.model_ = learned, tokenizer, model
        self.history_ = {k: [float(v) for v in vs] for k, vs in history.items()}
        self._predict_fn = None
        return self

    def _train(self, cfg, classes, texts, labels, groups, val_texts, val_labels, epochs, seed, verbose, strategy,
               mix=None, bag_choice=None):
        """One training run: (learned config, tokenizer, model, history, epochs early stopping
        chose or None). ``groups``: ``containment_groups`` of ``texts`` (the bag's C counts them).
        The recurrent logits' weight and offset are ``mix`` or, with validation texts and a fitted
        bag, chosen on them (``choose_recurrent_mix``); the bag's scaling and term frequency are
        ``bag_choice`` (nb, sublinear) or, where a setting says "auto", chosen by cross-validation
        on ``texts`` (``choose_bag_features``)."""
        from kerasllm import distribute
        from kerasllm._tf import keras, no_autotune, tf

        cw = self._class_weights(cfg.class_weight, classes, labels)
        max_length = cfg.max_length
        if max_length is None:
            max_length = default_max_length(texts)
        char_ngrams = cfg.char_ngrams if cfg.bag_of_ngrams else 0
        tokenizer = WordTokenizer(max_length=max_length, char_ngrams=char_ngrams, max_char_grams=cfg.max_char_grams)
        tokenizer.fit(texts, max_tokens=cfg.vocab_size, max_char_tokens=cfg.char_vocab_size)
        learned = dataclasses.replace(cfg, labels=classes, max_length=max_length, vocab_size=tokenizer.vocab_size,
                                      recurrent_length=min(cfg.recurrent_length or RECURRENT_LENGTH, max_length),
                                      char_vocab_size=len(tokenizer.char_vocabulary),
                                      max_char_grams=tokenizer.max_char_grams)
        if mix is not None:
            learned.recurrent_scale, learned.recurrent_offset = mix

        x_train = tokenizer.encode(texts)
        index = {label: i for i, label in enumerate(classes)}
        y_train = np.array([index[l] for l in labels], np.int32)
        table, chosen = None, {}  # chosen: what this run chose on held-out texts, for the history
        if learned.bag_of_ngrams:
            parts = ClassifierParts(learned, len(classes))
            grams = np.concatenate([parts.ngram_ids(x_train[i:i + 4096]).numpy() for i in range(0, len(x_train), 4096)])
            idf = idf_weights(grams, parts.bag_size)
            learned.ngram_idf = idf.tolist()
            learned.bag_sublinear = cfg.bag_tf == "sublinear"  # a jointly trained bag chooses nothing
            if cfg.bag_fit == "logistic":
                bag_c = effective_bag_c(cfg.bag_c, groups)
                weights = None if cw is None else cw[y_train]
                if bag_choice is None:
                    nb = (False, True) if cfg.bag_scaling == "auto" else (cfg.bag_scaling == "nb",)
                    sublinear = (True, False) if cfg.bag_tf == "auto" else (cfg.bag_tf == "sublinear",)
                    bag_choice, gain_se = choose_bag_features(grams, idf, y_train, len(classes), cfg.bag_c, groups,
                                                              seed, weights, nb, sublinear)
                    if len(nb) > 1:
                        chosen.update(bag_nb=[float(bag_choice[0])])
                    if len(sublinear) > 1:
                        chosen.update(bag_sublinear=[float(bag_choice[1])])
                    if len(nb) * len(sublinear) > 1:
                        chosen.update(bag_choice_gain_se=[gain_se])
                learned.bag_nb, learned.bag_sublinear = (bool(v) for v in bag_choice)
                table, learned.bag_offset = fit_bag(grams, idf, y_train, len(classes), bag_c, weights, nb=learned.bag_nb,
                                                    sublinear=learned.bag_sublinear)

        keras.utils.set_random_seed(seed)
        with distribute.scope(strategy):
            model = build_model(learned)
            parts = model_parts(model)
            if table is not None:
                parts.table.set_weights([table])
                parts.table.trainable = False
            if learned.recurrent and cfg.embedding_init == "svd":
                start = parts.embedding.get_weights()[0]
                parts.embedding.set_weights([start + svd_embeddings(x_train[:, :max_length], start.shape[0],
                                                                    start.shape[1], seed)])
            trainer = training_model(model)
            heads = len(trainer.outputs)
            # with ema: the averaged weights replace the trained ones after every epoch, so
            # validation, early stopping and the final model all see the average
            steps = -(-len(x_train) // cfg.batch_size)
            optimizer = keras.optimizers.Adam(cfg.learning_rate, clipnorm=cfg.clipnorm, use_ema=cfg.ema > 0,
                                              ema_momentum=ema_momentum(cfg.ema, steps),
                                              ema_overwrite_frequency=steps)
            if heads == 1:
                trainer.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
            else:
                own = cfg.path_loss_weight if cfg.sum_loss_weight > 0 else 1.0
                trainer.compile(optimizer=optimizer, loss=["sparse_categorical_crossentropy"] * heads,
                                loss_weights=[cfg.sum_loss_weight] + [own] * (heads - 1),
                                metrics=[["accuracy"]] + [[] for _ in range(heads - 1)])

        def dataset(x, y, shuffle):
            def per_head(v):
                return v if heads == 1 else (v,) * heads

            items = (x, per_head(y)) if cw is None else (x, per_head(y), per_head(cw[y]))
            data = tf.data.Dataset.from_tensor_slices(items)
            if shuffle:
                data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            return no_autotune(data.batch(cfg.batch_size if shuffle else 256).prefetch(2))

        x_val = tokenizer.encode(val_texts) if val_texts else None
        y_val = np.array([index[l] for l in val_labels], np.int32)
        val = dataset(x_val, y_val, False) if val_texts else None
        callbacks = []
        if epochs is None and val is not None:
            monitor = "val_probabilities_loss" if heads > 1 and cfg.sum_loss_weight > 0 else "val_loss"
            callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience,
                                                           restore_best_weights=True))
        history = {}
        if learned.recurrent or table is None:  # a fitted bag alone is already trained
            history = trainer.fit(dataset(x_train, y_train, True), validation_data=val, epochs=epochs or cfg.max_epochs,
                                  callbacks=callbacks, verbose=verbose).history
        if table is not None:
            parts.table.trainable = True  # frozen for training only (compression fine-tunes it)
            if learned.recurrent and mix is None and (cfg.recurrent_weight is not None or val is not None):
                prior = np.bincount(y_train, None if cw is None else cw[y_train], minlength=len(classes))
                if cfg.recurrent_weight is not None:
                    weight = float(cfg.recurrent_weight)
                    learned.recurrent_scale, learned.recurrent_offset = weight, prior_offset(weight, prior)
                else:  # chosen with both paths fitted on the training texts only
                    recurrent, bag = paths_model(model).predict(x_val, batch_size=256, verbose=0)
                    learned.recurrent_scale, learned.recurrent_offset, gain_se = choose_recurrent_mix(
                        recurrent, bag, y_val, prior)
                    history["recurrent_gain_se"] = [gain_se]
                history["recurrent_weight"] = [learned.recurrent_scale]
                parts.recurrent_scale.scale = learned.recurrent_scale
                parts.recurrent_scale.offset = learned.recurrent_offset
        best = callbacks[0].best_epoch + 1 if callbacks and history else None
        if table is not None:
            history["bag_c"] = [bag_c]  # the C the bag was fitted with (effective_bag_c)
        history.update(chosen)
        return learned, tokenizer, model, history, best

    @staticmethod
    def _class_weights(cw, classes, labels):
        """Per-class weights as an array indexed like ``classes``, or None."""
        if cw is None:
            return None
        if cw == "balanced":
            counts = np.array([labels.count(c) for c in classes], float)
            return np.where(counts > 0, len(labels) / (len(classes) * np.maximum(counts, 1)), 1.0).astype(np.float32)
        missing = [k for k in cw if k not in classes]
        if missing:
            raise ValueError(f"class_weight names unknown labels {missing}; labels are {classes}")
        return np.array([float(cw.get(c, 1.0)) for c in classes], np.float32)

    # -- inference ----------------------------------------------------------------------------
    def predict_proba(self, texts):
        model = self._fitted("model_")
        texts = check_texts(texts)
        if not texts:
            return np.zeros((0, len(self.classes)), np.float32)
        if getattr(self, "_predict_fn", None) is None:
            from kerasllm._tf import tf

            # A direct call in a graph function: model.predict costs ~80 ms of tf.data set-up per call.
            self._predict_fn = tf.function(
                lambda ids: model(ids, training=False),
                input_signature=[tf.TensorSpec([None, input_width(self.config)], tf.int32)],
            )
        ids = self.tokenizer.encode(texts)
        return np.concatenate([self._predict_fn(ids[i:i + 1024]).numpy() for i in range(0, len(ids), 1024)])

    def predict(self, texts):
        probs = self.predict_proba(texts)
        return [self.classes[i] for i in probs.argmax(axis=1)]

    def evaluate(self, texts, labels):
        texts = check_texts(texts)
        labels = check_labels(labels, len(texts))
        return classification_metrics(labels, self.predict(texts), self.classes)

    # -- persistence --------------------------------------------------------------------------
    def save(self, path):
        """Save settings, learned config, tokenizer and weights to the folder ``path`` (replaced atomically)."""
        from kerasllm.export.layout import replace_dir

        self._fitted("model_")

        def write(tmp):
            with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
                json.dump({"format": FORMAT, "settings": _jsonable(self.get_params()),
                           "config": _jsonable(asdict(self.config)), "tokenizer": self.tokenizer.get_config(),
                           "history": self.history}, f, ensure_ascii=False)
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
        if saved.get("format") != FORMAT:
            raise ValueError(f"{path} holds {saved.get('format')!r}, not a {FORMAT} classifier "
                             "(an older kerasllm saved it: train it again)")
        clf = cls(**_from_jsonable(saved["settings"]))
        clf.config_ = ClassifierConfig(**_from_jsonable(saved["config"]))
        clf.tokenizer_ = WordTokenizer.from_config(saved["tokenizer"])
        clf.history_ = saved.get("history", {})
        clf.model_ = build_model(clf.config_)
        clf.model_.load_weights(str(path / WEIGHTS_FILE))
        clf._predict_fn = None
        return clf

    # -- export -------------------------------------------------------------------------------
    def export_artifacts(self, directory, formats, quantization=None, representative_texts=None):
        """SavedModel (raw strings in, XLA-compiled) at the top of ``directory``; ``model.tflite`` beside it."""
        from kerasllm.export.classifier import write_saved_model, write_tflite

        self._fitted("model_")
        extra = {"labels": self.classes, "max_length": self.config.max_length, "keras": EXPORT_KERAS_DIR}
        self.save(Path(directory) / EXPORT_KERAS_DIR)
        if "saved_model" in formats:
            write_saved_model(self, directory)
        if "tflite" in formats:
            extra["tflite_quantization"] = write_tflite(self, directory, quantization, representative_texts)
        return extra


def _jsonable(settings):
    """class_weight keys may be int labels, which JSON objects would turn into strings: store pairs."""
    out = dict(settings)
    if isinstance(out.get("class_weight"), dict):
        out["class_weight"] = {"pairs": [[k, v] for k, v in out["class_weight"].items()]}
    return out


def _from_jsonable(settings):
    out = dict(settings)
    if isinstance(out.get("class_weight"), dict) and "pairs" in out["class_weight"]:
        out["class_weight"] = {k: v for k, v in out["class_weight"]["pairs"]}
    return out


def fit_bag(grams, idf, y, n_classes, c, sample_weight=None, nb=False, sublinear=False):
    """The bag path fitted as L2-regularised logistic regression on the features ``IdfBag`` computes
    (``bag_features``): (table [ids, classes], intercept per class). ``nb``: each
    feature is first scaled by its ``nb_ratios`` (NBSVM: a feature that tells the classes apart
    is penalised less); the scale is folded into the table, so the exported model is unchanged."""
    return fit_features(bag_features(grams, idf, sublinear), y, n_classes, c, sample_weight, nb)


def fit_features(x, y, n_classes, c, sample_weight=None, nb=False):
    """``fit_bag`` on features already made by ``bag_features`` (the folds reuse them across ``nb``)."""
    from scipy.sparse import diags
    from sklearn.linear_model import LogisticRegression

    scale = nb_ratios(x, y, n_classes, sample_weight) if nb else None
    lr = LogisticRegression(C=c, max_iter=1000).fit(x if scale is None else x @ diags(scale), y,
                                                    sample_weight=sample_weight)
    coef, intercept = lr.coef_ if scale is None else lr.coef_ * scale, lr.intercept_
    if n_classes == 2:  # one logit z for the second class: softmax([-z/2, z/2]) is the same sigmoid
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    return coef.T.astype(np.float32), [float(v) for v in intercept]


def nb_ratios(features, y, n_classes, sample_weight=None, alpha=1.0):
    """Per feature id, its naive-Bayes log-count ratio (Wang & Manning 2012, NBSVM): the log of its
    add-``alpha`` smoothed share of presences in one class over its share in the others, the
    largest in size over the classes (one against the rest). ``features``: [rows, ids] sparse."""
    present = (features > 0).astype(np.float64)
    w = np.ones(present.shape[0]) if sample_weight is None else np.asarray(sample_weight, np.float64)
    y = np.asarray(y)
    counts = np.stack([np.asarray(present[y == k].T @ w[y == k]).ravel() for k in range(n_classes)])
    total = counts.sum(0)
    ratio = np.zeros(present.shape[1])
    for k in range(n_classes if n_classes > 2 else 1):  # two classes: one ratio, the same in size for both
        p, q = counts[k] + alpha, total - counts[k] + alpha
        ratio = np.maximum(ratio, np.abs(np.log(p / p.sum()) - np.log(q / q.sum())))
    return ratio


def choose_bag_features(grams, idf, y, n_classes, bag_c, groups, seed, sample_weight=None, nb=(False, True),
                        sublinear=(True, False)):
    """((nb, sublinear), gain in standard errors): how the bag's features are made, chosen by
    cross-validation among ``nb`` (scaled by ``nb_ratios`` or not) times ``sublinear`` (term
    frequency 1 + ln count or the count). Over ``BAG_SCALING_FOLDS`` folds (whole groups,
    stratified) each candidate is fitted on the other folds; the first candidate (the plain one:
    unscaled, and sublinear if that is a candidate) is kept unless another's per-text log-loss
    over all held-out texts, each bag at its own best temperature in each fold (ranking, not
    calibration), gains ``MIN_GAIN_SE`` standard errors on it: the rule the recurrent weight follows. Of those that do, the largest mean gain wins. One
    held-out 10% was too few texts: it chose the scaling on CR at one seed of three (costing 1.5
    points) and missed it elsewhere. Too small a set keeps the plain bag: under
    ``BAG_SCALING_MIN_TEXTS`` texts (on the 290-text built-in topics the scaling's gain stayed under
    1.4 standard errors while the fits of long texts tripled the bag's training time; at 1,000 it
    missed 640 Shakespeare passages and 864 manual pages, where it was then chosen at 2 and 3 seeds
    of 3 and gained 0.4 and 1.9 points), or a class in fewer groups than folds.

    Sublinear term frequency is the plain bag because raw counts seldom beat it: the bag alone at
    seed 0 gained 2.3 points with it on 864 manual pages and lost at most 0.27 (SMS) on ten other
    sets (README); where raw counts do gain, the folds say so. Its count (a sort in the exported graph) costs
    about 9 us of a one-text TFLite call on SMS."""
    from sklearn.model_selection import StratifiedGroupKFold

    candidates = [(n, s) for s in sublinear for n in nb]  # the first is the plain bag
    y = np.asarray(y)
    groups = np.asarray(groups)
    k = BAG_SCALING_FOLDS
    per_class = [len(np.unique(groups[y == c])) for c in np.unique(y)]
    if (len(candidates) == 1 or len(y) < BAG_SCALING_MIN_TEXTS or len(per_class) < n_classes
            or min(per_class) < k):
        return candidates[0], float("nan")
    weights = None if sample_weight is None else np.asarray(sample_weight)
    losses = {c: [] for c in candidates}
    for train, val in StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(grams, y, groups):
        c = effective_bag_c(bag_c, groups[train])
        for s in sublinear:  # each fold's features made once per term frequency
            fitted, held_out = bag_features(grams[train], idf, s), bag_features(grams[val], idf, s)
            for n in nb:
                table, offset = fit_features(fitted, y[train], n_classes, c,
                                             None if weights is None else weights[train], nb=n)
                losses[(n, s)].append(calibrated_losses(held_out @ table + np.asarray(offset), y[val]))
    plain = np.concatenate(losses[candidates[0]])
    gains = {c: plain - np.concatenate(losses[c]) for c in candidates[1:]}
    winners = [c for c in gains if standard_errors(gains[c]) >= MIN_GAIN_SE]
    best = max(winners or gains, key=lambda c: gains[c].mean())  # without a winner: the closest one's gain
    return (best if winners else candidates[0]), standard_errors(gains[best])


def bag_features(grams, idf, sublinear=False):
    """The sparse matrix [rows, ids] whose product with the table is what ``IdfBag`` computes: per
    row, each id's idf times its term frequency, L2-normalised. With ``sublinear`` the term
    frequency is 1 + ln(count) (scikit-learn's ``sublinear_tf``); without, the count, and the norm
    sums each occurrence's idf squared (the rule before ``bag_tf``, kept for models saved then)."""
    from scipy.sparse import csr_matrix

    rows = np.repeat(np.arange(len(grams)), grams.shape[1])
    ids = np.asarray(grams).ravel()
    keep = idf[ids] > 0
    x = csr_matrix((np.ones(int(keep.sum())), (rows[keep], ids[keep])), shape=(len(grams), len(idf)))
    x.sum_duplicates()  # data: each id's count in its row
    count, weight = x.data, idf[x.indices]
    x.data = (1.0 + np.log(count) if sublinear else count) * weight
    # raw: the norm sums each occurrence's idf squared (the rule before bag_tf; not the count vector's norm)
    squares = np.bincount(np.repeat(np.arange(len(grams)), np.diff(x.indptr)),
                          x.data**2 if sublinear else count * weight**2, minlength=len(grams))
    x.data /= np.repeat(np.sqrt(np.maximum(squares, 1.0)), np.diff(x.indptr))  # as IdfBag
    return x


def svd_embeddings(words, vocab_size, dim, seed=0, scale=0.05):
    """Word vectors [vocab_size, dim] from the texts' word ids [rows, T] alone (no outside data):
    the truncated SVD of the documents' TF-IDF matrix (latent semantic analysis), so words used in
    the same texts start close and the recurrent path need not learn that from few labels.
    ``scale``: the vectors' standard deviation (added to the embedding's random start, whose
    spread is about 0.03; 0.05 beat 0.15 and 0.4 on the built-in topics)."""
    from scipy.sparse import csr_matrix
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfTransformer

    rows = np.repeat(np.arange(len(words)), words.shape[1])
    ids = words.ravel()
    keep = ids > 1  # not padding, not the unknown word
    counts = csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], ids[keep])), shape=(len(words), vocab_size))
    k = min(dim, min(counts.shape) - 1)
    out = np.zeros((vocab_size, dim), np.float32)
    if k < 1 or counts.nnz == 0:
        return out
    x = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    svd = TruncatedSVD(k, random_state=seed).fit(x)
    vectors = svd.components_.T * svd.singular_values_  # [vocab, k]
    seen = np.asarray(counts.sum(0)).ravel() > 0  # the others (padding, unknown) stay at their start
    out[seen, :k] = vectors[seen] * (scale / max(vectors[seen].std(), 1e-12))
    return out


MAX_DEFAULT_LENGTH = 2048
RECURRENT_LENGTH = 128


def default_max_length(texts):
    """Words the classifier reads when ``max_length`` is None: the 99th percentile of the training
    texts' lengths, within [16, MAX_DEFAULT_LENGTH]. Test texts are often longer than training ones (a
    model trained on phrases, then asked about whole sentences): trained on random spans of CR's and
    SUBJ's training sentences, the 95th percentile cut 18-19% of their whole test sentences short,
    the 99th 4%. Long documents: the bag of n-grams reads them whole up to 2,048 words, the
    recurrent path only the first ``recurrent_length`` (128). Cut at 128 words, 250-word passages
    lost to TF-IDF + logistic regression, which reads every word (benchmarks/classifier_quality.py
    --sets passages, with and without ``--set-option max_length=128``); cut at 512, manual pages
    (median 443 words, 99th percentile 6,800) lost 2.3 points against 1,024 or 4,096 (the manpages
    set of benchmarks/offline_sets.py)."""
    return int(np.clip(np.percentile(WordTokenizer().lengths(texts), 99), 16, MAX_DEFAULT_LENGTH))


def ema_momentum(ema, steps_per_epoch):
    """The momentum of the weights' moving average: ``ema``, shortened to span about one epoch at
    most. The average replaces the weights after every epoch, so a longer one would undo most of
    each epoch's training on small data (a few steps per epoch)."""
    if not ema:
        return 0.99  # unused (no average)
    return float(min(ema, 1.0 - 1.0 / max(steps_per_epoch, 2)))


# a choice made on held-out texts (the recurrent weight, the bag's scaling) needs this many of them
MIN_GAIN_TEXTS = 100
MIN_GAIN_SE = 2.0  # and the standard errors its per-text log-loss gain must reach


def row_losses(logits, y):
    """Per-row log-loss of ``logits`` [rows, classes] for integer labels ``y``."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]


def calibrated_losses(logits, y):
    """``row_losses`` at the temperature that gives the lowest mean (ranking, not calibration)."""
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, np.float64)
    t = minimize_scalar(lambda t: row_losses(t * logits, y).mean(), bounds=(1e-3, 1e3), method="bounded").x
    return row_losses(t * logits, y)


def standard_errors(gain):
    """The mean of per-text gains in standard errors of that mean."""
    gain = np.asarray(gain, np.float64)
    return float(gain.mean() / max(gain.std(ddof=1) / np.sqrt(len(gain)), 1e-12))


def log_prior(prior):
    prior = np.maximum(np.asarray(prior, np.float64), 1e-12)
    return np.log(prior / np.sum(prior))


def prior_offset(weight, prior):
    """The recurrent logits' offset at ``weight``: their share of the class prior comes off."""
    return [float(-weight * v) for v in log_prior(prior)]


def choose_recurrent_mix(recurrent, bag, y_val, prior):
    """(weight, offset per class, gain in standard errors) of the recurrent logits in the sum with a
    fitted bag's (the gain is NaN on too few texts): the model's
    logits are ``bag + weight * (recurrent - log prior)``. ``recurrent``, ``bag``: [rows, classes]
    logits on the validation texts; ``prior``: the training texts' (weighted) count per class.

    Each path's logits hold the class prior, so their sum counts it twice: the recurrent path's
    share of it comes off (as when multiplying two views' posteriors, naive-Bayes style). The
    weight gives the lowest validation log-loss of ``t * (bag + weight * (recurrent - log prior))``
    over a free temperature ``t``: the weight then measures what the recurrent path adds, not how
    far it sharpens or softens a badly calibrated bag (a small-data bag is under-confident, and
    any added logits then lowered the log-loss, even noise). Convex in ``(t, t * weight)``;
    weight 0 is allowed, so on validation the sum is never worse than the bag at its best
    temperature.

    The weight is kept only if the gain it brings is real: the mean per-text log-loss gain over
    the bag at its own best temperature must reach ``MIN_GAIN_SE`` standard errors (about a
    one-sided 2% test), else it is 0 and the model is its bag. On CR the weight found on 300
    validation texts gained 0.7-1.5 standard errors and cost the test split up to 1.5 points;
    where the recurrent path carries word order (TREC, SUBJ: 3-4.5 standard errors) it stays.
    On fewer than ``MIN_GAIN_TEXTS`` validation texts the weight is 0 as well: on the built-in
    topics (29 validation texts, the bag right on all but one to three) the chosen weight cost up
    to four points on the test split; so few texts cannot tell a recurrent path that helps from
    one that happened to be confident on them."""
    from scipy.optimize import minimize

    if len(y_val) < MIN_GAIN_TEXTS:
        return 0.0, [0.0] * len(prior), float("nan")
    extra = np.asarray(recurrent, np.float64) - log_prior(prior)
    bag = np.asarray(bag, np.float64)
    rows = np.arange(len(y_val))

    def loss(p):
        z = p[0] * bag + p[1] * extra
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        total = e.sum(axis=1, keepdims=True)
        prob = e / total
        onehot = np.zeros_like(z)
        onehot[rows, y_val] = 1.0
        g = prob - onehot  # d loss / d z, per row
        value = float(-(z[rows, y_val] - np.log(total[:, 0])).mean())
        return value, np.array([(g * bag).sum() / len(rows), (g * extra).sum() / len(rows)])

    t, c = minimize(loss, [1.0, 0.0], jac=True, method="L-BFGS-B", bounds=[(1e-3, 1e3), (0.0, 1e3)]).x
    weight = float(min(c / t, 8.0))
    gain_se = standard_errors(calibrated_losses(bag, y_val) - row_losses(t * (bag + weight * extra), y_val))
    if not gain_se >= MIN_GAIN_SE:
        weight = 0.0
    return weight, prior_offset(weight, prior), gain_se


def load_classifier(path):
    """Load a classifier saved with ``TextClassifier.save``."""
    return TextClassifier.load(path)


def containment_groups(texts):
    """A group id per text (the index of a text in the group): texts that repeat each other share
    one. A text joins the longest text that contains it as a run of whole words (lower-cased,
    split on whitespace), followed up to a text no longer one contains; an exact copy joins the
    first copy. So the phrases cut from a sentence (SST-style training data) and repeated texts
    land in their sentence's group, and a set of distinct sentences has one group per text.

    Used to hold out whole groups for validation (a phrase of a held-out sentence left in
    training would make the split look easier than new text) and to count how many independent
    examples the bag's logistic regression sees (``effective_bag_c``)."""
    words = [tuple(str(t).lower().split()) for t in texts]
    keys = {w[:3] for w in words if w}  # a container holds the text's first (up to) three words
    containers = {}
    # longest first (then by index): each list of containers comes out in that order
    for j in sorted(range(len(words)), key=lambda j: (-len(words[j]), j)):
        w = words[j]
        for size in (1, 2, 3):
            for start in range(len(w) - size + 1):
                key = w[start:start + size]
                if key in keys:
                    found = containers.setdefault(key, [])
                    if not found or found[-1] != j:
                        found.append(j)
    joined = [" " + " ".join(w) + " " for w in words]
    parent = list(range(len(words)))
    for i, w in enumerate(words):
        if not w:
            continue
        for j in containers[w[:3]]:
            if len(words[j]) < len(w) or (len(words[j]) == len(w) and j >= i):
                break  # the rest are shorter (or later copies)
            if joined[i] in joined[j]:
                parent[i] = j
                break
    groups = []
    for i in range(len(words)):
        root = i
        while parent[root] != root:  # a parent is longer, or an earlier copy: no cycles
            root = parent[root]
        groups.append(root)
    return np.asarray(groups, np.int64)


def effective_bag_c(bag_c, groups):
    """The bag's C for training texts in ``groups``: ``bag_c`` per independent example. Logistic
    regression's data term sums over texts, so texts that repeat each other (phrases of one
    sentence, copies) weigh that sentence several times against the same penalty; scaling C by
    groups / texts restores it (a set whose every text appears twice gives the same fit as once)."""
    return float(bag_c) * len(np.unique(groups)) / max(len(groups), 1)


def holdout(labels, fraction, seed, groups=None):
    """(train indices, validation indices): about ``fraction`` of each class held out, at least
    one example of each class kept in training (a class with one example is never held out).
    ``groups`` (``containment_groups``, or any ids): whole groups are held out, stratified by the
    label of each group's own text (its first one in a subset); without it every text is its own group."""
    rng = np.random.default_rng(seed)
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    members = {}
    for i, g in enumerate(groups.tolist()):
        members.setdefault(g, []).append(i)
    by_class = {}
    for g, texts in members.items():
        # the group's own text (containment_groups names a group by it) or, in a subset, its first one
        head = g if 0 <= g < len(labels) and groups[g] == g else texts[0]
        by_class.setdefault(labels[head], []).append(g)
    train, val = [], []
    for label in sorted(by_class, key=str):
        idx = rng.permutation(by_class[label]).tolist()
        k = min(len(idx) - 1, int(round(len(idx) * fraction)))
        val += idx[:k]
        train += idx[k:]
    if not val:  # tiny data: hold out one group of the largest class
        largest = max(by_class.values(), key=len)
        if len(largest) > 1:
            val = [largest[-1]]
            train.remove(largest[-1])
    train = [i for g in train for i in members[g]]
    val = [i for g in val for i in members[g]]
    # a group's texts may carry other labels: keep at least one example of every label in training
    seen = {labels[i] for i in train}
    for g in sorted({groups[i] for i in val if labels[i] not in seen}):
        if any(labels[i] not in seen for i in members[g]):
            val = [i for i in val if groups[i] != g]
            train += members[g]
            seen.update(labels[i] for i in members[g])
    return sorted(train), sorted(val)


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
