"""Small Keras layers the classifier is built from. Integer-only ops, so they convert to TFLite builtins."""
from kerasllm._tf import keras, tf


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
        weights = tf.cast(ids > 0, values.dtype)[:, :, None]
        total = tf.reduce_sum(values * weights, axis=1)
        count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
        if self.power == 0.5:
            # a multiply, not a divide: in int8 TFLite a count of 1 can round to zero when long texts
            # set the scale, and the int8 DIV kernel then refuses to run; rsqrt saturates instead.
            return total * tf.math.rsqrt(count)
        return total / (count if self.power == 1.0 else tf.pow(count, self.power))

    def get_config(self):
        return {**super().get_config(), "power": self.power}
