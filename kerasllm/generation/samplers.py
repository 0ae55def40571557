"""Choosing the next token: ``Greedy`` or ``Categorical`` (temperature, top-k, top-p), and the
compiled decode loop they share.

A sampler is a small class overriding ``next_token(logits, u, ...)``; the base class ``Sampler``
owns the loop (``start``: prefill's logits -> first token -> cached decode steps; ``resume``:
more steps from a cache). The same ``next_token`` code runs on TensorFlow (inside XLA, the
SavedModel) and on NumPy (the TFLite runtime) through a tiny ops table, and the random numbers
come from one counter-based generator, ``uniforms(seed, step, batch)``: an integer hash of
(seed, step, row) that both compute bit-identically. So a seed gives the same sample on every
runtime, a stream decoded in chunks draws what one call draws, and ``seed=None`` means a fresh
seed per call (``fresh_seed``). Sampling is by inverse CDF: the token is where ``u`` falls in the
cumulative (filtered) probabilities.
"""
from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import numpy as np

SEED_RANGE = 2 ** 31  # seeds travel as non-negative int32 (SavedModel / TF Serving inputs)


def fresh_seed():
    return secrets.randbelow(SEED_RANGE)


def seed_word(seed):
    """The int32 seed used by every runtime: ``seed`` modulo 2**31, or a fresh one for None."""
    return fresh_seed() if seed is None else int(seed) % SEED_RANGE


@dataclass(frozen=True)
class SamplerSettings:
    """Validated generation settings. ``temperature`` 0 is greedy; ``top_k`` None or 0 and ``top_p``
    None or 1 switch those filters off."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not math.isfinite(t) \
                or t < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {t!r}")
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0):
            raise ValueError(f"top_k must be None or an int >= 0 (0: no top-k), got {k!r}")
        p = self.top_p
        if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float, np.floating))
                              or not math.isfinite(p) or not 0 < p <= 1):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer))):
            raise ValueError(f"seed must be None or an int, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def sampler(self):
        if self.greedy:
            return Greedy()
        return Categorical(use_top_k=bool(self.top_k), use_top_p=self.top_p is not None and self.top_p < 1)

    def params(self):
        """The runtime values (tensors in the compiled loop): temperature, top_k (0 off), top_p (1 off)."""
        return (np.float32(self.temperature), np.int32(self.top_k or 0),
                np.float32(1.0 if self.top_p is None else self.top_p))


# --- one counter-based random generator for TF and NumPy ----------------------------------------
_MIX = (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x7FEB352D, 0x846CA68B)


def _hash(x, ops):
    """lowbias32 (Wellons): a 32-bit integer mix with good avalanche; uint32 wraps the same in TF and NumPy."""
    x = ops.xor(x, ops.shr(x, 16))
    x = x * ops.u32(_MIX[3])
    x = ops.xor(x, ops.shr(x, 15))
    x = x * ops.u32(_MIX[4])
    return ops.xor(x, ops.shr(x, 16))


def uniforms(seed, step, batch, ops, first_row=0):
    """float32 [batch] in [0, 1): one number per (seed, step, row); 24 bits, exact in float32.
    ``first_row``: the batch row of the first of these rows (a runtime that runs rows one by one)."""
    rows = ops.range_u32(batch) + ops.to_u32(first_row)  # first_row: an int or a scalar tensor
    x = ops.to_u32(seed) * ops.u32(_MIX[0]) + ops.to_u32(step) * ops.u32(_MIX[1]) + rows * ops.u32(_MIX[2])
    x = _hash(_hash(x, ops), ops)
    return ops.to_f32(ops.shr(x, 8)) * np.float32(2.0 ** -24)


class _NumpyOps:
    u32 = staticmethod(lambda v: np.array([v], np.uint32))  # 1-element arrays: uint32 wraps without warnings
    xor = staticmethod(np.bitwise_xor)
    shr = staticmethod(lambda x, n: np.right_shift(x, np.uint32(n)))
    range_u32 = staticmethod(lambda n: np.arange(n, dtype=np.uint32))
    to_u32 = staticmethod(lambda x: np.asarray(x).reshape(-1).astype(np.int64).astype(np.uint32))
    to_f32 = staticmethod(lambda x: np.asarray(x, np.float32))
    sort_desc = staticmethod(lambda x: -np.sort(-x, axis=-1))
    exp = staticmethod(np.exp)
    max = staticmethod(lambda x: np.max(x, axis=-1, keepdims=True))
    min = staticmethod(lambda x: np.min(x, axis=-1, keepdims=True))
    cumsum = staticmethod(lambda x: np.cumsum(x, axis=-1, dtype=np.float32))
    where = staticmethod(np.where)
    argmax = staticmethod(lambda x: np.argmax(x, axis=-1).astype(np.int32))
    count = staticmethod(lambda b: np.sum(b, axis=-1, dtype=np.int32))
    kth = staticmethod(lambda ordered, k: ordered[:, int(np.clip(k - 1, 0, ordered.shape[-1] - 1))][:, None])
    vocab = staticmethod(lambda x: x.shape[-1])
    f32 = staticmethod(np.float32)


class _TFOps:
    def __getattr__(self, name):  # built on first use: TensorFlow is imported lazily
        from kerasllm._tf import tf

        table = {
            "u32": lambda v: tf.constant(v, tf.uint32),
            "xor": tf.bitwise.bitwise_xor,
            "shr": lambda x, n: tf.bitwise.right_shift(x, tf.constant(n, tf.uint32)),
            "range_u32": lambda n: tf.cast(tf.range(n), tf.uint32),
            "to_u32": lambda x: tf.cast(tf.cast(x, tf.int64), tf.uint32),
            "to_f32": lambda x: tf.cast(x, tf.float32),
            "sort_desc": lambda x: tf.sort(x, axis=-1, direction="DESCENDING"),
            "exp": tf.exp,
            "max": lambda x: tf.reduce_max(x, axis=-1, keepdims=True),
            "min": lambda x: tf.reduce_min(x, axis=-1, keepdims=True),
            "cumsum": lambda x: tf.cumsum(x, axis=-1),
            "where": tf.where,
            "argmax": lambda x: tf.argmax(x, axis=-1, output_type=tf.int32),
            "count": lambda b: tf.reduce_sum(tf.cast(b, tf.int32), axis=-1),
            "kth": lambda ordered, k: tf.gather(ordered, tf.clip_by_value(k - 1, 0, tf.shape(ordered)[-1] - 1),
                                                axis=-1)[:, None],
            "vocab": lambda x: tf.shape(x)[-1],
            "f32": lambda v: tf.constant(v, tf.float32),
        }
        return table[name]


NUMPY, TF = _NumpyOps(), _TFOps()


# --- samplers -------------------------------------------------------------------------------------
class Sampler:
    """Base class: owns the compiled decode loop (``start``/``resume``, TensorFlow, run inside XLA).
    Subclasses override ``next_token``; ``key`` is what changes the compiled graph."""

    key = ()
    random = True  # next_token uses its uniforms

    def next_token(self, logits, u, temperature, top_k, top_p, ops):
        """logits [B, V] float32, u [B] uniforms -> int32 [B]."""
        raise NotImplementedError

    def pick(self, logits, seed, step, params, ops=TF, first_row=0):
        u = uniforms(seed, step, logits.shape[0] if ops is NUMPY else _tf_batch(logits), ops, first_row) \
            if self.random else None  # greedy draws nothing (the TFLite runtime picks per token in NumPy)
        return self.next_token(logits, u, *params, ops)

    def start(self, model, tokens, pad, cache, count, step0, seed, params, buffer, first_row=0):
        """Prefill ``tokens`` [B, W] (left-padded) and produce ``count`` tokens into ``buffer`` [B, N]
        -> (buffer, cache, last token). The last token is not decoded yet (a ``resume`` does that).
        ``first_row``: the batch row of row 0 (random numbers are per row; TFLite runs big batches in groups)."""
        from kerasllm.models.ops import dynamic_update_slice

        logits, cache = model.prefill(tokens, pad, cache)
        token = self.pick(logits, seed, step0, params, first_row=first_row)
        buffer = dynamic_update_slice(buffer, token[:, None], [0, 0])
        width = tokens.shape[1] if tokens.shape[1] is not None else _tf_width(tokens)
        return self._loop(model, token, cache, width, pad, count - 1, step0 + 1, seed, params, buffer, 1, first_row)

    def resume(self, model, token, cache, index, pad, count, step0, seed, params, buffer, first_row=0):
        """Decode ``token`` at slot ``index``, then go on for ``count`` new tokens -> (buffer, cache, last)."""
        return self._loop(model, token, cache, index, pad, count, step0, seed, params, buffer, 0, first_row)

    def _loop(self, model, token, cache, index, pad, count, step0, seed, params, buffer, offset, first_row):
        from kerasllm._tf import tf
        from kerasllm.models.ops import dynamic_update_slice

        constants = model.decode_constants()

        def body(i, token, cache, out):
            logits, cache = model.decode(token, index + i, pad, cache, constants)
            token = self.pick(logits, seed, step0 + i, params, first_row=first_row)
            return i + 1, token, cache, dynamic_update_slice(out, token[:, None], [0, offset + i])

        _, token, cache, buffer = tf.while_loop(lambda i, *_: i < count, body, (tf.constant(0), token, cache, buffer),
                                                maximum_iterations=buffer.shape[1])
        return buffer, cache, token


class Greedy(Sampler):
    key = ("greedy",)
    random = False

    def next_token(self, logits, u, temperature, top_k, top_p, ops):
        return ops.argmax(logits)


class Categorical(Sampler):
    """Sample from softmax(logits / temperature), optionally only among the ``top_k`` most likely
    tokens and the smallest set whose probability reaches ``top_p``. A filter whose flag is off is
    skipped; one whose value is off (top_k 0, top_p 1) changes nothing, so both give the same token."""

    def __init__(self, use_top_k=True, use_top_p=True):
        self.use_top_k, self.use_top_p = use_top_k, use_top_p
        self.key = ("sample", use_top_k, use_top_p)

    def next_token(self, logits, u, temperature, top_k, top_p, ops):
        z = logits / temperature
        neg_inf = ops.f32(-np.inf)
        if self.use_top_k:
            kth = ops.kth(ops.sort_desc(z), top_k)
            z = ops.where((top_k > 0) & (z < kth), neg_inf, z)
        if self.use_top_p:
            ordered = ops.sort_desc(z)
            probs = ops.exp(ordered - ops.max(ordered))
            before = ops.cumsum(probs) - probs  # probability mass of more likely tokens
            cutoff = ops.min(ops.where(before < top_p * ops.max(ops.cumsum(probs)), ordered, ops.f32(np.inf)))
            z = ops.where((top_p < 1) & (z < cutoff), neg_inf, z)
        cdf = ops.cumsum(ops.exp(z - ops.max(z)))
        target = u[:, None] * ops.max(cdf)
        return ops.where(ops.count(cdf <= target) < ops.vocab(z), ops.count(cdf <= target), ops.vocab(z) - 1)


class AnySampler(Sampler):
    """For exported signatures: greedy when temperature <= 0, else ``Categorical`` with both filters
    (chosen by values at run time; the same tokens as the specialised samplers)."""

    key = ("any",)

    def next_token(self, logits, u, temperature, top_k, top_p, ops):
        sampled = Categorical().next_token(logits, u, ops.where(temperature > 0, temperature, ops.f32(1.0)),
                                           top_k, top_p, ops)
        return ops.where(temperature > 0, sampled, ops.argmax(logits))


def _tf_batch(x):
    from kerasllm._tf import tf

    return x.shape[0] if x.shape[0] is not None else tf.shape(x)[0]


def _tf_width(x):
    from kerasllm._tf import tf

    return tf.shape(x)[1]
