"""The classifier's maths, written once.

``ClassifierParts`` owns the layers and ``ClassifierParts.logits`` is the forward pass. Training
calls it on a Keras input (a functional model); the export lowering calls the same method on
concrete tensors at each length bucket, with the recurrence's input projection folded into the
embedding table (``Recurrence.fold``: ``gather(E) @ W + b == gather(E @ W + b)``). Padding (id 0)
is masked by value everywhere, so a row padded on the left, on the right, or cut to a shorter
bucket gives the same answer.

Custom layers are registered with Keras, so ``clone_model``/``from_config`` (compression) find them.
"""
from kerasllm._tf import keras, tf

KINDS = ("simple_rnn", "lstm", "gru")
POOLINGS = ("last", "average", "max", "max_mean")
_register = keras.utils.register_keras_serializable(package="kerasllm")


def recurrent_words(config):
    """Words the recurrent path reads, the first ones: ``recurrent_length``; a model saved before that
    setting existed read ``max_length`` words in both paths."""
    return getattr(config, "recurrent_length", None) or config.max_length


def input_width(config, max_length=None, max_char_grams=None):
    """Columns of the model's int32 input: word ids, then (bag path with char n-grams) n-gram ids."""
    words = config.max_length if max_length is None else max_length
    grams = config.max_char_grams if max_char_grams is None else max_char_grams
    return words + (grams if config.bag_of_ngrams and config.char_ngrams else 0)


@_register
class Columns(keras.layers.Layer):
    """ids[:, start:stop] (a layer, so the functional model serializes without a Lambda)."""

    def __init__(self, start, stop, **kwargs):
        super().__init__(**kwargs)
        self.start, self.stop = int(start), int(stop)

    def call(self, ids):
        return ids[:, self.start:self.stop]

    def get_config(self):
        return {**super().get_config(), "start": self.start, "stop": self.stop}


@_register
class FirstWords(keras.layers.Layer):
    """ids [batch, T] -> [batch, count]: each row's first ``count`` non-padding ids in order, then
    padding: the same words whichever side (or sides) the row was padded on."""

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = int(count)

    def call(self, ids):
        t = ids.shape[1]
        # distinct keys T..1 at the words, 0 at padding: the top ``count`` are the first words
        _, order = tf.math.top_k(tf.cast(ids > 0, tf.int32) * (t - tf.range(t, dtype=tf.int32))[None, :],
                                 k=self.count)
        return tf.gather(ids, order, batch_dims=1)

    def get_config(self):
        return {**super().get_config(), "count": self.count}


@_register
class HashedBigrams(keras.layers.Layer):
    """ids [batch, length] -> ids of adjacent-token pairs hashed into ``buckets``, plus ``offset``.

    A pair touching padding gets id 0 (padding). Pure integer arithmetic: identical in Keras,
    SavedModel and TFLite, and no string work at inference time.
    """

    def __init__(self, vocab_size, buckets, offset, **kwargs):
        super().__init__(**kwargs)
        if vocab_size * vocab_size >= 2**31:
            # prev * vocab_size + ids must stay inside int32
            raise ValueError(f"vocab_size {vocab_size} is too large for int32 bigram hashing (max 46340)")
        self.vocab_size, self.buckets, self.offset = int(vocab_size), int(buckets), int(offset)

    def call(self, ids):
        prev = tf.pad(ids[:, :-1], [[0, 0], [1, 0]])
        hashed = tf.math.floormod(prev * self.vocab_size + ids, self.buckets) + self.offset
        return tf.where((prev > 0) & (ids > 0), hashed, tf.zeros_like(ids))

    def get_config(self):
        return {**super().get_config(), "vocab_size": self.vocab_size, "buckets": self.buckets, "offset": self.offset}


@_register
class IdDropout(keras.layers.Layer):
    """In training, set a random ``rate`` of the non-padding ids to padding (n-gram dropout)."""

    def __init__(self, rate, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.rate, self.seed = float(rate), seed

    def call(self, ids, training=None):
        if not self.rate or not training:
            return ids
        keep = tf.random.uniform(tf.shape(ids), seed=self.seed) >= self.rate
        return tf.where(keep, ids, tf.zeros_like(ids))

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@_register
class MaskedMean(keras.layers.Layer):
    """Pool over the time axis the positions whose id is not padding: ([batch, T, d], ids [batch, T]) -> [batch, d].

    ``power=1``: the mean. ``power=0.5``: the sum over sqrt(count), the scaling of an L2-normalised
    bag of words; each feature then keeps a useful gradient in long texts.
    """

    def __init__(self, power=1.0, **kwargs):
        super().__init__(**kwargs)
        self.power = float(power)

    def call(self, inputs):
        values, ids = inputs
        return masked_mean(values, tf.cast(ids > 0, values.dtype)[:, :, None], self.power)

    def get_config(self):
        return {**super().get_config(), "power": self.power}


@_register
class IdfBag(keras.layers.Layer):
    """([batch, L, classes] table rows, n-gram ids [batch, L]) -> the bag's logits [batch, classes]:
    the L2-normalised TF-IDF vector of the row's n-grams times the table, as TF-IDF + a linear
    model. An n-gram's weight is its inverse document frequency times its term frequency: with
    ``sublinear`` 1 + ln(count in the row) (scikit-learn's ``sublinear_tf``); without, each
    occurrence weighs its idf, in the sum and (squared) in the norm (the rule models saved before
    ``sublinear`` were fitted with). An id never seen in training weighs 0.

    ``idf``: one weight per id, learned by ``fit`` from the training texts and kept in the layer's
    config (not as a weight), so the model's trainable layers stay the two tables and the denses.
    """

    def __init__(self, idf, sublinear=False, **kwargs):
        super().__init__(**kwargs)
        self.idf = [float(v) for v in idf]
        self.sublinear = bool(sublinear)
        self._idf = tf.constant(self.idf, tf.float32)

    def call(self, inputs):
        values, ids = inputs
        weights = tf.gather(self._idf, ids)  # id 0 (padding) has weight 0
        if not self.sublinear:
            return self._normalise(tf.reduce_sum(values * weights[:, :, None], axis=1),
                                   tf.reduce_sum(weights * weights, axis=1, keepdims=True))
        _, order, per_sum, per_square = self.count_weights(ids)
        values = tf.gather(values, order, batch_dims=1)
        weights = tf.gather(weights, order, batch_dims=1)
        return self._normalise(tf.reduce_sum(values * (weights * per_sum)[:, :, None], axis=1),
                               tf.reduce_sum(weights * weights * per_square, axis=1, keepdims=True))

    @staticmethod
    def count_weights(ids):
        """(sorted ids, order, per_sum, per_square), each [batch, L]: ``gather(ids, order,
        batch_dims=1)`` is the sorted ids, and at each sorted position, with c that id's count in
        its row, per_sum is (1 + ln c) / c and per_square (1 + ln c)^2 / c: summed over an id's c
        copies they give its sublinear term frequency and its square, with no table the size of
        the vocabulary.

        In the sorted row equal ids are neighbours; a cumsum of run starts numbers the runs, a
        second sort packs the starts' positions in order, and a run's count is the distance from
        its start to the next. Every shape is static: with a data-dependent one (a FILL of the batch
        size, or a segment sum over batch x L) TFLite allocates the tensors after it on every call;
        at the SMS model's 24-word bucket that version cost 12.5 us over the raw count's graph, this
        one 8.5-9.3 us. The weights are looked up by count, so there is no LOG op."""
        import numpy as np

        width = ids.shape[1]
        ids, order = tf.math.top_k(ids, k=width)  # descending: equal ids side by side
        starts = ids != tf.pad(ids[:, :-1], [[0, 0], [1, 0]], constant_values=-1)
        run = tf.cumsum(tf.cast(starts, tf.int32), axis=1)  # 1 in the first run
        # key width - position at a start, 0 elsewhere: descending keys give the starts in order
        keys = tf.where(starts, tf.constant(np.arange(width, 0, -1, dtype=np.int32)[None, :]), 0)
        first = width - tf.pad(tf.math.top_k(keys, k=width).values, [[0, 0], [0, 1]])  # then width
        count = tf.gather(first, run, batch_dims=1) - tf.gather(first, run - 1, batch_dims=1)
        c = np.arange(width + 1, dtype=np.float64)
        tf_c = 1.0 + np.log(np.maximum(c, 1.0))
        per_sum = tf.constant(np.where(c > 0, tf_c / np.maximum(c, 1.0), 0.0), tf.float32)
        per_square = tf.constant(np.where(c > 0, tf_c**2 / np.maximum(c, 1.0), 0.0), tf.float32)
        return ids, order, tf.gather(per_sum, count), tf.gather(per_square, count)

    @staticmethod
    def _normalise(weighted, squares):
        # Every seen id weighs >= 1 (idf_weights), so the sum is 0 (no seen n-gram) or >= 1: a floor
        # of 1 changes nothing else, and unlike a tiny epsilon it survives float16 (1e-12 -> 0 -> 0/0).
        return weighted / tf.sqrt(tf.maximum(squares, 1.0))

    def fold(self, table):
        """[ids, classes + 1]: each table row times its id's weight, then the weight squared; the
        export gathers this one table (one gather, one memory row per n-gram instead of two) and
        ``call_folded`` sums it. The products are the float32 products ``call`` computes."""
        return tf.concat([table * self._idf[:, None], (self._idf * self._idf)[:, None]], axis=1)

    def call_folded(self, folded, ids):
        """``call``'s result from the ``fold`` table and the n-gram ids [batch, L]."""
        if not self.sublinear:
            sums = tf.reduce_sum(tf.gather(folded, ids), axis=1)
            return self._normalise(sums[:, :-1], sums[:, -1:])
        ids, _, per_sum, per_square = self.count_weights(ids)
        # the table's columns and the squares' column gathered apart: slicing the gathered rows
        # cost more in TFLite (at 430 ids, 11 us against 18 us for this tail)
        return self._normalise(tf.reduce_sum(tf.gather(folded[:, :-1], ids) * per_sum[:, :, None], axis=1),
                               tf.reduce_sum(tf.gather(folded[:, -1], ids) * per_square, axis=1, keepdims=True))

    def get_config(self):
        return {**super().get_config(), "idf": [round(v, 4) for v in self.idf], "sublinear": self.sublinear}


def idf_weights(grams, size):
    """Smoothed inverse document frequency (scikit-learn's: ln((1 + n) / (1 + df)) + 1) of each
    id below ``size`` over the rows of ``grams`` (numpy [rows, L]); 0 for padding and unseen ids."""
    import numpy as np

    df = np.zeros(size, np.int64)
    for row in grams:
        df[np.unique(row[row > 0])] += 1
    idf = np.log((1.0 + len(grams)) / (1.0 + df)) + 1.0
    idf[df == 0] = 0.0
    return idf.astype(np.float32)


def masked_mean(values, weights, power=1.0):
    total = tf.reduce_sum(values * weights, axis=1)
    count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
    if power == 0.5:
        # a multiply, not a divide: in int8 TFLite a count of 1 can round to zero when long texts
        # set the scale, and the int8 DIV kernel then refuses to run; rsqrt saturates instead.
        return total * tf.math.rsqrt(count)
    return total / (count if power == 1.0 else tf.pow(count, power))


def masked_max(values, weights):
    """Max over the unmasked time steps of values in [-1, 1] (recurrent states); 0 for an empty text.
    Padding is pushed below -1 by arithmetic rather than a select: fewer ops in TFLite."""
    top = tf.reduce_max(values - 4.0 * (1.0 - weights), axis=1)
    return top * tf.minimum(tf.reduce_max(weights, axis=1), 1.0)


@_register
class Recurrence(keras.layers.Layer):
    """([batch, T, d] inputs, ids [batch, T]) -> pooled recurrent features [batch, F].

    One- or two-way SimpleRNN / LSTM / GRU; padding steps keep the state (so any padding layout
    gives the same states at the real words), and pooling ("last" state, "average", "max", or
    "max_mean": both concatenated) covers the real words only. The loop is unrolled (T is static):
    the same code trains and converts to plain TFLite builtins.

    SimpleRNN fast path: both directions advance in one step (one matmul with a block-diagonal
    recurrent kernel, an add, a tanh and a select), and ``fold`` gives the input projection
    ``E @ W + b`` as one table, so the export gathers each word's projected input directly. The
    export (projected inputs, pooling other than "last") runs ``_simple_rnn_packed`` instead: the
    same states with the words packed to the front, so its steps need no mask.
    """

    def __init__(self, kind="simple_rnn", units=32, bidirectional=True, pooling="max_mean", **kwargs):
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"architecture must be one of {KINDS}, got {kind!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.kind, self.units, self.bidirectional, self.pooling = kind, int(units), bool(bidirectional), pooling
        self.directions = 2 if bidirectional else 1

    def build(self, input_shape):
        d = int(input_shape[0][-1])
        u = self.units
        if self.kind == "simple_rnn":
            # one kernel for all directions: columns [forward | backward]
            self.kernel = self.add_weight("kernel", (d, u * self.directions), initializer="glorot_uniform")
            self.recurrent_kernels = [self.add_weight(f"recurrent_kernel_{i}", (u, u), initializer="orthogonal")
                                      for i in range(self.directions)]
            self.bias = self.add_weight("bias", (u * self.directions,), initializer="zeros")
        else:
            make = keras.layers.LSTMCell if self.kind == "lstm" else keras.layers.GRUCell
            self.cells = [make(u, name=f"cell_{i}") for i in range(self.directions)]
            for cell in self.cells:
                with tf.name_scope(cell.name):  # distinct weight names per direction (h5 saving)
                    cell.build((None, d))
        super().build(input_shape)

    @property
    def features(self):
        return self.units * self.directions * (2 if self.pooling == "max_mean" else 1)

    def fold(self, embeddings):
        """The SimpleRNN input projection of every embedding row: [vocab, units * directions]."""
        return tf.matmul(embeddings, self.kernel) + self.bias

    def call(self, inputs, projected=False):
        """``projected``: the inputs are already ``x @ kernel + bias`` (rows of ``fold``): the
        export's inference graph, which runs the packed loop (``_simple_rnn_packed``: same states,
        fewer ops); training and the Keras model run the masked loop."""
        x, ids = inputs
        keep = ids > 0  # [batch, T]
        if self.kind == "simple_rnn":
            if projected and self.pooling != "last":
                return self._simple_rnn_packed(x, keep)
            return self._simple_rnn(x if projected else tf.matmul(x, self.kernel) + self.bias, keep)
        return self._cells(x, keep)

    def _time_major(self, x, keep):
        """Per-step inputs and masks, the backward direction's reversed in time and put beside the
        forward one's, so the loop runs both directions in one pass."""
        width = x.shape[-1] // self.directions if self.kind == "simple_rnn" else x.shape[-1]
        mask = tf.cast(keep, x.dtype)[:, :, None]
        if self.directions == 2:
            if self.kind == "simple_rnn":
                x = tf.concat([x[:, :, :width], tf.reverse(x[:, :, width:], [1])], axis=2)
            else:
                x = tf.concat([x, tf.reverse(x, [1])], axis=2)
            mask = tf.concat([mask, tf.reverse(mask, [1])], axis=2)  # [batch, T, 2]
        return tf.unstack(x, axis=1), mask

    def _simple_rnn(self, x, keep):
        u = self.units
        steps, mask = self._time_major(x, keep)
        if self.directions == 2:
            zeros = tf.zeros((u, u), x.dtype)
            forward, backward = self.recurrent_kernels
            recurrent = tf.concat([tf.concat([forward, zeros], 1), tf.concat([zeros, backward], 1)], 0)
            ones = tf.ones((1, 1, u), x.dtype)
            state_mask = tf.concat([mask[:, :, :1] * ones, mask[:, :, 1:] * ones], axis=2)  # [batch, T, 2u]
        else:
            recurrent, state_mask = self.recurrent_kernels[0], mask
        # Padding keeps the state by arithmetic, h * (1 - m) + new * m with m in {0, 1} (exactly a
        # select), not tf.where: TFLite's XNNPACK then runs the whole unrolled loop as one partition.
        masks = tf.unstack(state_mask, axis=1)
        h = tf.tanh(steps[0]) * masks[0]
        states = [h]
        for x_t, m_t in zip(steps[1:], masks[1:]):
            h = h * (1.0 - m_t) + tf.tanh(x_t + tf.matmul(h, recurrent)) * m_t
            states.append(h)
        return self._pool(states, h, state_mask)

    def _simple_rnn_packed(self, x, keep):
        """The pooled states with the text's words packed to the front first, in each direction's
        order (forward: w1..wk, backward: wk..w1), wherever the padding was. Every direction then
        starts at its first word and the steps after its last word only feed states the pooling
        leaves out, so a step needs no mask: a matmul per direction, an add and a tanh (the masked
        step has six ops). Each direction multiplies by its own [units, units] kernel, not by one
        block-diagonal [2u, 2u]: half the multiply-adds, and XNNPACK packs a copy of the weights
        for every unrolled step, so half the bytes the loop streams through the cache (measured in
        TFLite: 0.82x the block-diagonal step's time, the same probabilities). The states at the
        words are the masked loop's up to float rounding (h starts at 0 either way; measured
        max diff 2e-7 in the probabilities). Not for "last" pooling, which reads the state after
        the last step. Only the export runs it: training keeps the masked loop, whose float
        rounding the trained models (and their accuracy figures) come from."""
        steps_total = x.shape[1]
        t = tf.range(steps_total, dtype=tf.int32)[None, :]  # [1, T]
        keep = tf.cast(keep, tf.int32)
        count = tf.reduce_sum(keep, axis=1, keepdims=True)  # [batch, 1]: the words
        # positions of the words in order, then the padding's (top_k of distinct keys T..1 at the words)
        _, order = tf.math.top_k(keep * (steps_total - t), k=steps_total)
        inside = t < count  # [batch, T]: a word's step, in either direction
        ordered = tf.gather(x, order, batch_dims=1)
        if self.directions == 2:
            width = x.shape[-1] // 2
            back = tf.gather(order, tf.where(inside, count - 1 - t, t), batch_dims=1)
            ordered = tf.concat([ordered[:, :, :width], tf.gather(x, back, batch_dims=1)[:, :, width:]], axis=2)
        kernels = self.recurrent_kernels
        if self.directions == 2:
            u = self.units

            def recurrent(h):
                return tf.concat([tf.matmul(h[:, :u], kernels[0]), tf.matmul(h[:, u:], kernels[1])], axis=1)
        else:
            def recurrent(h):
                return tf.matmul(h, kernels[0])
        steps = tf.unstack(ordered, axis=1)
        h = tf.tanh(steps[0])
        states = [h]
        for x_t in steps[1:]:
            h = tf.tanh(x_t + recurrent(h))
            states.append(h)
        return self._pool(states, h, tf.cast(inside, x.dtype)[:, :, None])

    def _cells(self, x, keep):
        u = self.units
        steps, mask = self._time_major(x, keep)
        d = x.shape[-1]
        batch = tf.shape(x)[0]
        carried = [[tf.zeros((batch, u), x.dtype)] * (2 if self.kind == "lstm" else 1) for _ in self.cells]
        states = []
        for x_t, m_t in zip(steps, tf.unstack(mask > 0, axis=1)):
            outs = []
            for i, cell in enumerate(self.cells):
                out, new = cell(x_t[:, i * d:(i + 1) * d], carried[i])  # direction i's columns
                m = m_t[:, i:i + 1]
                carried[i] = [tf.where(m, n, c) for n, c in zip(new, carried[i])]
                outs.append(carried[i][0])
            states.append(tf.concat(outs, axis=1) if len(outs) > 1 else outs[0])
        state_mask = tf.repeat(mask, u, axis=2) if self.directions == 2 else mask
        return self._pool(states, states[-1], state_mask)

    def _pool(self, states, last, state_mask):
        if self.pooling == "last":
            return last  # padding kept the state: the final state is each direction's last real word
        seq = tf.stack(states, axis=1)  # [batch, T, units * directions]
        pooled = []
        if self.pooling in ("max", "max_mean"):
            pooled.append(masked_max(seq, state_mask))
        if self.pooling in ("average", "max_mean"):
            pooled.append(masked_mean(seq, state_mask))
        return tf.concat(pooled, axis=1) if len(pooled) > 1 else pooled[0]

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "units": self.units,
                "bidirectional": self.bidirectional, "pooling": self.pooling}


class ClassifierParts:
    """The classifier's layers and its forward pass (``logits``), shared by training and export.

    Two paths whose logits add up: a recurrent path (embedding -> ``Recurrence`` -> dense) that
    reads word order, and a linear bag of n-grams (words, hashed word bigrams, character
    n-grams; the fastText idea) that carries the lexical evidence logistic regression is good at.
    """

    def __init__(self, config, n_classes):
        self.config, self.n_classes = config, n_classes
        L = keras.layers
        self.recurrent = bool(getattr(config, "recurrent", True))
        self.recurrent_length = recurrent_words(config)
        self.bag = bool(config.bag_of_ngrams)
        self.bag_fitted = False
        if not (self.recurrent or self.bag):
            raise ValueError("the classifier needs a path: recurrent=True or bag_of_ngrams=True")
        if self.recurrent:
            self.embedding = L.Embedding(config.vocab_size, config.embedding_dim, name="embedding")
            # drop whole words (the same channels of a word together): word dropout
            self.embedding_dropout = L.Dropout(config.embedding_dropout, noise_shape=(None, None, 1),
                                               name="embedding_dropout")
            self.rnn = Recurrence(config.architecture, config.units, config.bidirectional, config.pooling,
                                  name=config.architecture)
            self.rnn_dropout = L.Dropout(config.dropout, name="rnn_dropout")
            self.rnn_logits = L.Dense(n_classes, name="rnn_logits")
        if self.bag:
            # ids hold words and character n-grams (below total_vocab); bigrams go after them
            total_vocab = config.vocab_size + (config.char_vocab_size if config.char_ngrams else 0)
            self.bigrams = HashedBigrams(config.vocab_size, config.bigram_buckets, offset=total_vocab, name="bigrams")
            self.grams = L.Concatenate(axis=1, name="ngrams")
            self.gram_dropout = IdDropout(config.bag_dropout, name="ngram_dropout")
            self.table = L.Embedding(total_vocab + config.bigram_buckets, n_classes, name="ngram_logits_table")
            self.bag_size = total_vocab + config.bigram_buckets
            idf = getattr(config, "ngram_idf", None)
            if idf is not None and len(idf) != self.bag_size:
                idf = None  # a config changed after fit (e.g. a distilled student with fewer buckets)
            self.bag_pool = (MaskedMean(power=0.5, name="bag_of_ngrams") if idf is None
                             else IdfBag(idf, sublinear=bool(getattr(config, "bag_sublinear", None)),
                                    name="bag_of_ngrams"))
            # Adam moves each weight by about the learning rate per step whatever its gradient, so the
            # sparse bag path would learn far slower than the RNN; scaling its output speeds it up.
            # A table fitted by logistic regression (``bag_fit="logistic"``) is used as it is, with
            # its intercept as the offset.
            fitted = self.bag_fitted = getattr(config, "bag_offset", None) is not None and idf is not None
            self.bag_scale = L.Rescaling(1.0 if fitted else config.bag_learning_rate_multiplier,
                                         offset=list(config.bag_offset) if fitted else 0.0, name="bag_scale")
        if self.recurrent:
            # the recurrent logits' weight in the sum, chosen on the validation split after training
            # and its offset: minus its share of the class prior, which both paths' logits hold
            offset = getattr(config, "recurrent_offset", None)
            self.recurrent_scale = L.Rescaling(float(getattr(config, "recurrent_scale", 1.0)),
                                               offset=list(offset) if offset is not None else 0.0,
                                               name="recurrent_scale")
        self.add = L.Add(name="logits")

    def paths(self, ids, n_words=None, training=None, folded=None, bag_folded=None):
        """[recurrent logits, bag logits] (the paths present) for ids [batch, n_words + n-gram columns].

        ``folded``: the ``Recurrence.fold`` table of the embedding; ``bag_folded``: ``bag_fold()``'s
        table (export: inference only)."""
        n_words = self.config.max_length if n_words is None else n_words
        words = Columns(0, n_words, name="word_ids")(ids) if ids.shape[1] > n_words else ids
        out = []
        if self.recurrent:
            # the recurrent path reads the first recurrent_length words; the bag reads them all
            read = (FirstWords(self.recurrent_length, name="recurrent_words")(words)
                    if words.shape[1] > self.recurrent_length else words)
            if folded is not None:
                h = self.rnn([tf.gather(folded, read), read], projected=True)
            else:
                x = self.embedding_dropout(self.embedding(read), training=training)
                h = self.rnn([x, read])
            out.append(self.rnn_logits(self.rnn_dropout(h, training=training)))
        if self.bag:
            grams = self.grams([ids, self.bigrams(words)])
            grams = self.gram_dropout(grams, training=training)
            if bag_folded is not None:
                out.append(self.bag_scale(self.bag_pool.call_folded(bag_folded, grams)))
            else:
                out.append(self.bag_scale(self.bag_pool([self.table(grams), grams])))
        return out

    def ngram_ids(self, ids, n_words=None):
        """The bag path's ids (words, char n-grams, hashed bigrams) of token ids (numpy or tensor)."""
        n_words = self.config.max_length if n_words is None else n_words
        return self.grams([ids, self.bigrams(ids[:, :n_words])])

    def logits(self, ids, n_words=None, training=None, folded=None, bag_folded=None):
        return self.combine(self.paths(ids, n_words, training, folded, bag_folded))

    def combine(self, paths):
        """The model's logits from ``paths``' output: the recurrent logits scaled, plus the bag's."""
        paths = list(paths)
        if self.recurrent:
            paths[0] = self.recurrent_scale(paths[0])
        return self.add(paths) if len(paths) > 1 else paths[0]

    def fold(self):
        """The recurrent input projection folded into the embedding table, or None (LSTM/GRU)."""
        if self.recurrent and self.config.architecture == "simple_rnn":
            return self.rnn.fold(self.embedding.embeddings)
        return None

    def bag_fold(self):
        """The bag table with its IDF weights folded in (``IdfBag.fold``), or None (no IDF bag)."""
        if self.bag and isinstance(self.bag_pool, IdfBag):
            return self.bag_pool.fold(self.table.embeddings)
        return None


def softmax(logits, name="probabilities"):
    return keras.layers.Activation("softmax", dtype="float32", name=name)(logits)


def build_model(config, parts=None):
    """ids [batch, input_width(config)] -> class probabilities, a functional Keras model.
    ``config.labels`` gives the classes. ``model_parts(model)`` gives its ``ClassifierParts``."""
    from types import SimpleNamespace

    parts = parts or ClassifierParts(config, len(config.labels))
    ids = keras.Input(shape=(input_width(config),), dtype="int32", name="token_ids")
    paths = parts.paths(ids)
    probs = softmax(parts.combine(paths))
    model = keras.Model(ids, probs, name="text_classifier")
    # each path's own probabilities, from the same graph: training_model trains them too (not a
    # bag fitted by logistic regression: it is frozen while the recurrent path trains)
    names = ["recurrent"] * parts.recurrent + ["bag"] * parts.bag
    heads = [softmax(p, name=f"{n}_probabilities") for p, n in zip(paths, names)
             if len(paths) > 1 and not (n == "bag" and parts.bag_fitted)]
    model._kerasllm = SimpleNamespace(parts=parts, heads=heads, paths=keras.Model(ids, paths))
    return model


def model_parts(model):
    """The ``ClassifierParts`` of a model made by ``build_model`` (None for other models)."""
    found = getattr(model, "_kerasllm", None)
    return found.parts if found is not None else None


def paths_model(model):
    """ids -> [recurrent logits before their scale, bag logits] (the paths present)."""
    return model._kerasllm.paths


def training_model(model):
    """``model`` with one more output per path (each path's own probabilities), same layers and
    one forward pass: each path also learns to classify alone, so neither leans on the other and
    the sum of their logits is an ensemble."""
    heads = model._kerasllm.heads
    return keras.Model(model.input, [model.output, *heads]) if heads else model
