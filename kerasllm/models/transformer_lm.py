"""Decoder-only Transformer language model (GPT-2 style), in tf_keras.

Pre-LayerNorm blocks, causal multi-head attention with one fused QKV projection, GELU MLP,
learned positions, input/output embeddings tied, dropout. Besides ``call`` (whole sequences,
for training and the uncached reference) the model has the three methods the compiled
decode loop needs (``kerasllm.generation``):

- ``init_cache(batch, length)``: a preallocated key/value cache, per layer ``[B * heads, length, head_dim]``;
- ``prefill(tokens, pad, cache)``: run left-padded prompts, write their keys/values at 0..P-1;
- ``decode(token, pos, pad, cache)``: one token per row at position ``pos``, written in place
  with ``dynamic_update_slice``; attention reads the cache under a mask.

Rows of a batch are left-padded to one length (``pad[b]`` leading pad tokens), so all rows
write the same cache slot each step; pads are masked out of attention and positions count
from each row's first real token, which makes a padded row compute what it computes alone.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from kerasllm._tf import keras, tf
from kerasllm.models.ops import dynamic_update_slice

NEG = -1e9  # masked attention score: exp underflows to exactly 0, and a fully masked row stays finite


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclass
class TransformerConfig:
    vocab_size: int
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    ff: int = 512
    context_length: int = 256
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "hidden", "layers", "heads", "ff", "context_length"):
            _check_positive(name, getattr(self, name))
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def num_params(self) -> int:
        h, f = self.hidden, self.ff
        block = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
        return self.vocab_size * h + self.context_length * h + self.layers * block + 2 * h

    def to_dict(self):
        return asdict(self)


class Block(keras.layers.Layer):
    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # noqa: E731 (a fresh one per layer)
        # GPT-2: residual projections scaled down with depth
        proj_init = lambda: keras.initializers.RandomNormal(stddev=0.02 / math.sqrt(2 * config.layers))  # noqa: E731
        self.heads, self.head_dim, self.hidden = config.heads, config.head_dim, config.hidden
        self.ln1 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln1")
        self.qkv = keras.layers.Dense(3 * config.hidden, kernel_initializer=init(), name="qkv")
        self.proj = keras.layers.Dense(config.hidden, kernel_initializer=proj_init(), name="proj")
        self.ln2 = keras.layers.LayerNormalization(epsilon=1e-5, name="ln2")
        self.fc = keras.layers.Dense(config.ff, kernel_initializer=init(), name="fc")
        self.out = keras.layers.Dense(config.hidden, kernel_initializer=proj_init(), name="out")
        self.drop = keras.layers.Dropout(config.dropout)

    def call(self, x, mask, cache=None, start=None, training=False):
        """x [B, S, hidden]; mask [B or 1, 1, S, keys] bool. With ``cache`` ((k, v), each
        [B * heads, T, head_dim]) the new keys/values are written at ``start``; a single-token
        step (S == 1) attends over the whole cache, a prefill only over its own tokens."""
        b, s = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(self.ln1(x)), [b, s, 3, self.heads, self.head_dim])
        # [3, B * heads, S, head_dim]: batch and heads merged so the cache and the attention
        # matmuls share one layout (a reshape between them makes XLA copy the cache every step)
        qkv = tf.reshape(tf.transpose(qkv, [2, 0, 3, 1, 4]), [3, b * self.heads, s, self.head_dim])
        q, k, v = qkv[0], qkv[1], qkv[2]
        keys, values = k, v
        if cache is not None:
            kc = _update(cache[0], k, start)
            vc = _update(cache[1], v, start)
            cache = (kc, vc)
            if x.shape[1] == 1:
                keys, values = kc, vc
        scores = tf.matmul(q, keys, transpose_b=True) * (1.0 / math.sqrt(self.head_dim))
        scores = tf.reshape(scores, [b, self.heads, s, -1])
        weights = tf.nn.softmax(tf.where(mask, scores, NEG))
        weights = tf.reshape(self.drop(weights, training=training), [b * self.heads, s, -1])
        y = tf.reshape(tf.matmul(weights, values), [b, self.heads, s, self.head_dim])
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [b, s, self.hidden])
        x = x + self.drop(self.proj(y), training=training)
        h = tf.nn.gelu(self.fc(self.ln2(x)), approximate=True)
        x = x + self.drop(self.out(h), training=training)
        return x, cache


def _update(cache, new, start):
    """Write ``new`` [B * heads, S, D] into ``cache`` [B * heads, T, D] at time ``start``: an XLA
    dynamic-update-slice, done in place inside the compiled loop (TFLite: DYNAMIC_UPDATE_SLICE)."""
    return dynamic_update_slice(cache, new, [0, start, 0])


class TransformerLM(keras.Model):
    architecture = "transformer"

    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # noqa: E731
        self.token_embedding = keras.layers.Embedding(config.vocab_size, config.hidden,
                                                      embeddings_initializer=init(), name="token_embedding")
        self.position_embedding = keras.layers.Embedding(config.context_length, config.hidden,
                                                         embeddings_initializer=init(), name="position_embedding")
        self.blocks = [Block(config, name=f"block_{i}") for i in range(config.layers)]
        self.ln_f = keras.layers.LayerNormalization(epsilon=1e-5, name="ln_f")
        self.drop = keras.layers.Dropout(config.dropout)

    def get_config(self):
        """Plain values, so Keras can save the model (without one it warns about the config object)."""
        return {"name": self.name, "config": self.config.to_dict()}

    @classmethod
    def from_config(cls, config):
        return cls(TransformerConfig(**config["config"]), name=config.get("name"))

    def build_weights(self):
        self(tf.zeros([1, 2], tf.int32))
        return self

    def _logits(self, x, output_weights=None):
        if output_weights is None:
            return tf.matmul(self.ln_f(x), self.token_embedding.embeddings, transpose_b=True)
        return tf.matmul(self.ln_f(x), output_weights)

    def decode_constants(self):
        """Computed once before the decode loop: the tied output matrix [hidden, vocab]
        (transposing the embedding inside the loop would copy it every step)."""
        return tf.transpose(self.token_embedding.embeddings)

    def call(self, tokens, training=False):
        """tokens [B, S] -> logits [B, S, vocab]: the whole sequence, no cache."""
        s = tf.shape(tokens)[1]
        x = self.token_embedding(tokens) + self.position_embedding(tf.range(s))[None]
        x = self.drop(x, training=training)
        idx = tf.range(s)
        mask = (idx[None, :] <= idx[:, None])[None, None]
        for block in self.blocks:
            x, _ = block(x, mask, training=training)
        return self._logits(x)

    # --- the cached path used by kerasllm.generation -------------------------------------
    def init_cache(self, batch, length):
        c = self.config
        shape = [batch * c.heads, length, c.head_dim]
        return tuple((tf.zeros(shape), tf.zeros(shape)) for _ in range(c.layers))

    def prefill(self, tokens, pad, cache):
        """tokens [B, P] left-padded (``pad`` [B] leading pads) -> (logits of the last position [B, V], cache)."""
        p = tf.shape(tokens)[1]
        idx = tf.range(p)
        positions = tf.maximum(idx[None, :] - pad[:, None], 0)
        x = self.token_embedding(tokens) + tf.gather(self.position_embedding.embeddings, positions)
        mask = (idx[None, :] <= idx[:, None])[None] & (idx[None, None, :] >= pad[:, None, None])
        mask = mask[:, None]  # [B, 1, P, P]
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, mask, cache=layer_cache, start=0)
            new_cache.append(layer_cache)
        return self._logits(x[:, -1:])[:, 0], tuple(new_cache)

    def decode(self, token, pos, pad, cache, constants=None):
        """token [B] at position ``pos`` (scalar, same slot for every row) -> (logits [B, V], cache)."""
        length = cache[0][0].shape[1] or tf.shape(cache[0][0])[1]
        x = self.token_embedding(token[:, None]) + tf.gather(self.position_embedding.embeddings,
                                                             tf.maximum(pos - pad, 0))[:, None]
        key = tf.range(length)
        mask = ((key[None, :] <= pos) & (key[None, :] >= pad[:, None]))[:, None, None]  # [B, 1, 1, T]
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, mask, cache=layer_cache, start=pos)
            new_cache.append(layer_cache)
        return self._logits(x, constants)[:, 0], tuple(new_cache)
