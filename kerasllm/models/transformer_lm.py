"""Decoder-only Transformer language model (GPT-2 style), in tf_keras.

Pre-LayerNorm blocks, causal multi-head attention with one fused QKV projection, GELU MLP,
input/output embeddings tied, dropout; positions learned (``positions="learned"``, GPT-2) or
rotary (``positions="rotary"``, RoPE on queries and keys; no position table).

The generation API (used by ``kerasllm.generation``, the exports and the serving layer):

- ``init_cache(batch, length)``: a zero key/value cache, per layer ``(k, v)``, each
  ``[batch * heads, length, head_dim]`` (batch and heads merged: the layout the matmuls use).
- ``call_with_cache(tokens, cache, index, pad)``: ``tokens`` [B, S] go to cache slots
  ``index .. index + S - 1``; every query attends over the cache slots ``<=`` its own and
  ``>= pad[b]``. Returns ``(logits [B, S, vocab], cache)``. One code path for every S: a prefill
  is ``index = 0`` and a decode step is ``S = 1``; nothing is chosen by a static shape.
- ``prefill(tokens, pad, cache)`` -> (logits of the last position [B, V], cache): ``call_with_cache``
  at index 0, projecting only the last position to the vocabulary.
- ``decode(token, index, pad, cache, constants)`` -> (logits [B, V], cache): one token per row at
  slot ``index``; ``constants`` is ``decode_constants()`` computed once outside the loop.

Rows of a batch are left-padded to one width (``pad[b]`` leading pad tokens), so every row
writes the same cache slot each step; pads are masked out and positions count from each row's
first real token (position = slot - pad), so a padded row computes what it computes alone.
The caller keeps position = slot - pad below ``context_length`` (``kerasllm.generation.window``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from kerasllm._tf import keras, tf
from kerasllm.models.ops import dynamic_update_slice

NEG = -1e9  # masked attention score: exp underflows to exactly 0, and a fully masked row stays finite
POSITIONS = ("learned", "rotary")


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
    positions: str = "learned"

    def __post_init__(self):
        for name in ("vocab_size", "hidden", "layers", "heads", "ff", "context_length"):
            _check_positive(name, getattr(self, name))
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.positions == "rotary" and self.head_dim % 2:
            raise ValueError(f"rotary positions need an even head size, got hidden/heads = {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def num_params(self) -> int:
        h, f = self.hidden, self.ff
        block = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * f + f) + (f * h + h)
        table = self.context_length * h if self.positions == "learned" else 0
        return self.vocab_size * h + table + self.layers * block + 2 * h

    def to_dict(self):
        return asdict(self)


def rotary_tables(positions, head_dim, heads):
    """cos and sin [B * heads, S, head_dim] for integer ``positions`` [B, S] (RoPE, halves rotated)."""
    inv_freq = 1.0 / (10000.0 ** (tf.range(0, head_dim, 2, dtype=tf.float32) / head_dim))
    angles = tf.cast(positions, tf.float32)[..., None] * inv_freq  # [B, S, head_dim / 2]
    angles = tf.repeat(tf.concat([angles, angles], -1), heads, axis=0)  # row b*heads + h, like q and k
    return tf.cos(angles), tf.sin(angles)


def _rotate(x, rope):
    cos, sin = rope
    x1, x2 = tf.split(x, 2, axis=-1)
    return x * cos + tf.concat([-x2, x1], -1) * sin


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

    def call(self, x, mask, cache=None, index=None, rope=None, training=False):
        """x [B, S, hidden]; mask [B or 1, 1, S, keys] bool. Without ``cache`` the keys are the S
        tokens themselves; with ``cache`` ((k, v), each [B * heads, T, head_dim]) the new keys and
        values are written at slot ``index`` and the queries attend over all T slots (the mask
        hides the ones not yet written). ``step`` is the same maths for one token over a read-only cache."""
        b, s = tf.shape(x)[0], tf.shape(x)[1]
        qkv = tf.reshape(self.qkv(self.ln1(x)), [b, s, 3, self.heads, self.head_dim])
        # [3, B * heads, S, head_dim]: batch and heads merged so the cache and the attention
        # matmuls share one layout (a reshape between them makes XLA copy the cache every step)
        qkv = tf.reshape(tf.transpose(qkv, [2, 0, 3, 1, 4]), [3, b * self.heads, s, self.head_dim])
        q, keys, values = qkv[0], qkv[1], qkv[2]
        if rope is not None:
            q, keys = _rotate(q, rope), _rotate(keys, rope)
        if cache is not None:
            # an XLA dynamic-update-slice, in place inside the compiled loop (TFLite: DYNAMIC_UPDATE_SLICE)
            keys = dynamic_update_slice(cache[0], keys, [0, index, 0])
            values = dynamic_update_slice(cache[1], values, [0, index, 0])
            cache = (keys, values)
        scores = tf.matmul(q, keys, transpose_b=True) * (1.0 / math.sqrt(self.head_dim))
        scores = tf.reshape(scores, [b, self.heads, s, -1])
        weights = tf.nn.softmax(tf.where(mask, scores, NEG))
        weights = tf.reshape(self.drop(weights, training=training), [b * self.heads, s, -1])
        y = tf.reshape(tf.matmul(weights, values), [b, self.heads, s, self.head_dim])
        y = tf.reshape(tf.transpose(y, [0, 2, 1, 3]), [b, s, self.hidden])
        return self._mlp(x, y, training), cache

    def _mlp(self, x, y, training=False):
        """The block after attention: output projection of ``y`` (heads joined), residual, MLP, residual."""
        x = x + self.drop(self.proj(y), training=training)
        h = tf.nn.gelu(self.fc(self.ln2(x)), approximate=True)
        return x + self.drop(self.out(h), training=training)

    def step(self, x, bias, prefix, rope=None):
        """``call`` for one token per row over a read-only cache (the TFLite decode step), shaped for
        few ops: x [B, 1, hidden]; ``prefix`` keys transposed [B * heads, head_dim, P] and values
        [B * heads, P, head_dim] (the slots before this token); ``bias`` [B * heads, P + 1], 0 or
        NEG (an additive mask: TFLite's select is slow), the last column for this token's own key;
        rope: cos and sin [B * heads, head_dim] -> (x [B, 1, hidden], (k, v) of this token, each
        [B * heads, head_dim]). Attention is multiply-and-sum, not a batch matmul (XNNPACK packs a
        batch matmul's non-constant operand, the whole cache, on every call: measured about 1.1x
        slower per step at T = 96-192)."""
        b, d = tf.shape(x)[0], self.head_dim
        # row b * heads + h of [B * heads, head_dim] is head h of row b: a reshape, no transpose
        q, k, v = (tf.reshape(t, [-1, d]) for t in tf.split(self.qkv(self.ln1(x)), 3, axis=-1))
        if rope is not None:
            q, k = _rotate(q, rope), _rotate(k, rope)
        old = tf.reduce_sum(tf.reshape(q, [-1, d, 1]) * prefix[0], 1)  # [B * heads, P]
        scores = tf.concat([old, tf.reduce_sum(q * k, -1, keepdims=True)], -1)
        weights = tf.nn.softmax(scores * (1.0 / math.sqrt(d)) + bias)
        split = prefix[1].shape[1]  # slices, not tf.split: XNNPACK takes no SPLIT_V (it would cut the graph)
        y = tf.reduce_sum(tf.reshape(weights[:, :split], [-1, split, 1]) * prefix[1], 1) + weights[:, split:] * v
        return self._mlp(x, tf.reshape(y, [b, 1, self.hidden])), (k, v)


class TransformerLM(keras.Model):
    architecture = "transformer"

    def __init__(self, config: TransformerConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        init = lambda: keras.initializers.RandomNormal(stddev=0.02)  # noqa: E731
        self.token_embedding = keras.layers.Embedding(config.vocab_size, config.hidden,
                                                      embeddings_initializer=init(), name="token_embedding")
        if config.positions == "learned":
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

    def _embed(self, tokens, positions):
        """Token embeddings (+ learned positions) and the rotary tables (None for learned positions)."""
        x = self.token_embedding(tokens)
        if self.config.positions == "learned":
            return x + self.position_embedding(positions), None
        return x, rotary_tables(positions, self.config.head_dim, self.config.heads)

    def logits(self, hidden, output_weights=None):
        """Final LayerNorm and the tied output projection; ``output_weights`` is ``decode_constants()``."""
        if output_weights is None:
            return tf.matmul(self.ln_f(hidden), self.token_embedding.embeddings, transpose_b=True)
        return tf.matmul(self.ln_f(hidden), output_weights)

    def decode_constants(self):
        """Computed once before the decode loop: the tied output matrix [hidden, vocab]
        (transposing the embedding inside the loop would copy it every step)."""
        return tf.transpose(self.token_embedding.embeddings)

    def call(self, tokens, training=False):
        """tokens [B, S] -> logits [B, S, vocab]: the whole sequence, no cache (training, reference)."""
        b, s = tf.shape(tokens)[0], tf.shape(tokens)[1]
        idx = tf.range(s)
        x, rope = self._embed(tokens, tf.broadcast_to(idx[None], [b, s]))
        x = self.drop(x, training=training)
        mask = (idx[None, :] <= idx[:, None])[None, None]
        for block in self.blocks:
            x, _ = block(x, mask, rope=rope, training=training)
        return self.logits(x)

    # --- the cached path --------------------------------------------------------------------
    def init_cache(self, batch, length):
        c = self.config
        shape = [batch * c.heads, length, c.head_dim]
        return tuple((tf.zeros(shape), tf.zeros(shape)) for _ in range(c.layers))

    def hidden_with_cache(self, tokens, cache, index, pad):
        """tokens [B, S] at slots index.. -> (final hidden states [B, S, hidden] before ``ln_f``, cache)."""
        s = tf.shape(tokens)[1]
        length = cache[0][0].shape[1] or tf.shape(cache[0][0])[1]
        slots = index + tf.range(s)  # [S]
        x, rope = self._embed(tokens, tf.maximum(slots[None, :] - pad[:, None], 0))
        key = tf.range(length)
        mask = (key[None, None, :] <= slots[None, :, None]) & (key[None, None, :] >= pad[:, None, None])
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block(x, mask[:, None], cache=layer_cache, index=index, rope=rope)
            new_cache.append(layer_cache)
        return x, tuple(new_cache)

    def call_with_cache(self, tokens, cache, index, pad=None, constants=None):
        """tokens [B, S] at cache slots ``index .. index + S - 1`` -> (logits [B, S, V], cache)."""
        pad = tf.zeros([tf.shape(tokens)[0]], tf.int32) if pad is None else pad
        x, cache = self.hidden_with_cache(tokens, cache, index, pad)
        return self.logits(x, constants), cache

    def prefill(self, tokens, pad, cache):
        """tokens [B, P] left-padded (``pad`` [B] leading pads) -> (logits of the last position [B, V], cache)."""
        x, cache = self.hidden_with_cache(tokens, cache, 0, pad)
        return self.logits(x[:, -1:])[:, 0], cache  # (ln_f was built for 3-D input)

    def decode_after_prefix(self, token, index, pad, prefix, constants=None):
        """One decode step over a read-only cache (TFLite): token [B] at cache slot ``index``; the
        slots below ``index`` are in ``prefix`` (per layer keys transposed [B * heads, head_dim, P]
        and values [B * heads, P, head_dim]). Same mask and positions as ``decode``; the cache is
        not written -> (logits [B, V], the new (k, v) per layer, each [B * heads, head_dim])."""
        heads = self.config.heads
        x, rope = self._embed(token[:, None], tf.maximum(index - pad, 0)[:, None])  # x [B, 1, hidden]
        if rope is not None:
            rope = tuple(tf.reshape(t, [-1, self.config.head_dim]) for t in rope)  # [B * heads, head_dim]
        key = tf.range(prefix[0][1].shape[1])  # a static length: TFLite plans every tensor statically
        # the mask as a bias per row b * heads + h, built from integers: XNNPACK takes only the float
        # ops after it (an op it does not take between float ops splits its graph, once per layer)
        pad = tf.reshape(tf.tile(pad[:, None], [1, heads]), [-1])  # [B * heads]
        old = (key[None, :] < index) & (key[None, :] >= pad[:, None])  # [B * heads, P]; its own key is seen
        bias = tf.where(tf.concat([old, tf.ones_like(old[:, :1])], 1), 0.0, NEG)  # [B * heads, P + 1]
        new = []
        for block, before in zip(self.blocks, prefix):
            x, entries = block.step(x, bias, before, rope)
            new.append(entries)
        # a reshape, not [:, 0]: that STRIDED_SLICE is not delegated to XNNPACK (measured 200 us for
        # [8, 1, 8192] logits, a third of the output projection's time)
        return tf.reshape(self.logits(x, constants), [-1, self.config.vocab_size]), tuple(new)

    def decode(self, token, index, pad, cache, constants=None):
        """token [B] at cache slot ``index`` (a scalar, the same for every row) -> (logits [B, V], cache)."""
        x, cache = self.hidden_with_cache(token[:, None], cache, index, pad)
        return self.logits(x, constants)[:, 0], cache
