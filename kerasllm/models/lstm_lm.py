"""LSTM language model: Embedding -> stacked LSTM -> Dense, in tf_keras.

Training (``call``) runs each layer as ``lstm_sequence``: the input projection of every step as one
matmul, then a loop over the steps that XLA compiles in seconds and runs fast (Keras' own LSTM
under XLA projected each step's input inside the loop and ran several times slower than a plain
graph). It computes what Keras' LSTM computes, up to float rounding, on the same weights.

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
    b, units = tf.shape(x)[0], cell.units
    projected = tf.transpose(tf.matmul(x, cell.kernel), [1, 0, 2])  # [T, B, 4 x units]: out of the loop

    def step(state, xz):
        h, c = state
        z = tf.nn.bias_add(xz + tf.matmul(h, cell.recurrent_kernel), cell.bias)  # Keras' order of sums
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        return tf.sigmoid(o) * tf.tanh(c), c

    zeros = tf.zeros([b, units], x.dtype)
    h, _ = tf.scan(step, projected, initializer=(zeros, zeros))
    return tf.transpose(h, [1, 0, 2])


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
