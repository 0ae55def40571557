"""LSTM language model: Embedding -> stacked LSTM -> Dense, in tf_keras.

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
        self(tf.zeros([1, 2], tf.int32))
        return self

    def call(self, tokens, training=False):
        x = self.embedding(tokens)
        for lstm in self.lstms:
            x = self.drop(lstm(x, training=training)[0], training=training)
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
