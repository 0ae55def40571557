"""LSTM language model: Embedding -> stacked LSTM -> Dense, in tf_keras.

Training (``call``) runs each layer as ``lstm_sequence``: the input projection of every step as one
matmul, then a loop over the steps (XLA compiles it in seconds), with a gradient whose loop carries
only the recurrence. It computes what Keras' LSTM computes, up to float rounding, on the same weights.

Same generation interface as ``TransformerLM`` (``init_cache``, ``call_with_cache``, ``prefill``,
``decode``); the "cache" is the carried (h, c) state of every layer, so there is no context limit
when generating and ``index`` only decides which steps are padding. Left padding is masked: a
padded row keeps its (zero) state until its first real token.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from kerasllm._tf import keras, tf
from kerasllm.models.transformer_lm import _check_positive


@dataclass
class LSTMConfig:
    vocab_size: int
    hidden: int = 256
    layers: int = 2
    context_length: int = 256  # training window length (generation is not limited)
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden", "layers", "context_length"):
            _check_positive(name, getattr(self, name))
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def num_params(self) -> int:
        h, v = self.hidden, self.vocab_size
        return v * h + self.layers * 4 * (2 * h * h + h) + h * v + v

    def to_dict(self):
        return asdict(self)


def lstm_sequence(cell, x):
    """x [B, T, in] -> h [B, T, units] of a Keras ``LSTMCell`` (gates i, f, c, o; sigmoid and tanh)
    run from a zero state over all T steps."""
    projected = tf.transpose(tf.matmul(x, cell.kernel), [1, 0, 2])  # [T, B, 4 x units]: out of the loop
    return tf.transpose(_recurrence(projected, tf.identity(cell.recurrent_kernel), tf.identity(cell.bias)), [1, 0, 2])


@tf.custom_gradient
def _recurrence(xz, recurrent_kernel, bias):
    """xz [T, B, 4u] (inputs times the input kernel) -> h [T, B, u]. The gradient loop carries only
    what depends on the previous step; the recurrent kernel's and the bias' gradients are one matmul
    and one sum over all steps afterwards (automatic differentiation would add a [u, 4u] outer
    product into an accumulator at every step)."""
    units = tf.shape(recurrent_kernel)[0]
    zeros = tf.zeros([tf.shape(xz)[1], units], xz.dtype)

    def step(state, z_in):
        h, c = state[0], state[1]
        z = tf.nn.bias_add(z_in + tf.matmul(h, recurrent_kernel), bias)  # Keras' order of sums
        i, f, g, o = tf.split(z, 4, axis=-1)
        i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
        c = f * c + i * g
        return tf.tanh(c) * o, c, tf.concat([i, f, g, o], -1)

    h, c, gates = tf.scan(step, xz, initializer=(zeros, zeros, tf.zeros_like(xz[0])))

    def grad(dh_out):
        c_prev = tf.concat([zeros[None], c[:-1]], 0)

        def back(carry, inputs):
            dh_next, dc_next = carry[0], carry[1]
            dh_t, c_t, c_before, gate = inputs
            i, f, g, o = tf.split(gate, 4, axis=-1)
            dh = dh_t + dh_next
            tanh_c = tf.tanh(c_t)
            dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
            dz = tf.concat([dc * g * i * (1.0 - i), dc * c_before * f * (1.0 - f), dc * i * (1.0 - g * g),
                            dh * tanh_c * o * (1.0 - o)], -1)
            return tf.matmul(dz, recurrent_kernel, transpose_b=True), dc * f, dz

        _, _, dz = tf.scan(back, (dh_out, c, c_prev, gates), initializer=(zeros, zeros, tf.zeros_like(xz[0])),
                           reverse=True)
        h_prev = tf.concat([zeros[None], h[:-1]], 0)
        flat = lambda t: tf.reshape(t, [-1, tf.shape(t)[-1]])  # noqa: E731
        return dz, tf.matmul(flat(h_prev), flat(dz), transpose_a=True), tf.reduce_sum(flat(dz), 0)

    return h, grad


class LSTMLM(keras.Model):
    architecture = "lstm"

    def __init__(self, config: LSTMConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.embedding = keras.layers.Embedding(config.vocab_size, config.hidden, name="embedding")
        self.lstms = [keras.layers.LSTM(config.hidden, return_sequences=True, return_state=True, name=f"lstm_{i}")
                      for i in range(config.layers)]
        self.drop = keras.layers.Dropout(config.dropout)
        self.head = keras.layers.Dense(config.vocab_size, name="head")

    def get_config(self):
        """Plain values, so Keras can save the model (without one it warns about the config object)."""
        return {"name": self.name, "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(LSTMConfig(**config["config"]), name=config.get("name"))

    def build_weights(self):
        tokens = tf.zeros([1, 2], tf.int32)
        self.call_with_cache(tokens, self.init_cache(1), 0)  # builds the Keras LSTM layers (``call`` uses their cells)
        self(tokens)
        return self

    def call(self, tokens, training=False):
        x = self.embedding(tokens)
        for lstm in self.lstms:
            x = self.drop(lstm_sequence(lstm.cell, x), training=training)
        return self.head(x)

    def init_cache(self, batch, length=None):
        zeros = tf.zeros([batch, self.config.hidden])
        return tuple((zeros, zeros) for _ in self.lstms)

    def decode_constants(self):
        return tf.zeros([])

    def call_with_cache(self, tokens, cache, index, pad=None, constants=None):
        """tokens [B, S] at steps ``index ..`` -> (logits [B, S, V], state); steps ``< pad[b]`` are skipped."""
        x, cache = self._run(tokens, cache, index, pad)
        return self.head(x), cache

    def _run(self, tokens, cache, index, pad):
        x = self.embedding(tokens)
        mask = None
        if pad is not None:
            mask = (index + tf.range(tf.shape(tokens)[1]))[None, :] >= pad[:, None]
        new_cache = []
        for lstm, (h, c) in zip(self.lstms, cache):
            x, h, c = lstm(x, mask=mask, initial_state=[h, c])
            new_cache.append((h, c))
        return x, tuple(new_cache)

    def prefill(self, tokens, pad, cache):
        x, cache = self._run(tokens, cache, 0, pad)
        return self.head(x[:, -1]), cache

    def decode(self, token, index, pad, cache, constants=None):
        """One step for every row (decode steps come after the padding, so no mask is needed)."""
        x = self.embedding(token)
        new_cache = []
        for lstm, (h, c) in zip(self.lstms, cache):
            x, (h, c) = lstm.cell(x, [h, c])
            new_cache.append((h, c))
        return self.head(x), tuple(new_cache)
