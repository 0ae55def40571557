"""Choosing the next token inside the compiled loop: greedy, or temperature / top-k / top-p sampling.

Sampling uses the Gumbel-max trick with stateless noise seeded by (seed, step), so a seed
repeats the same sample, and a stream decoded in chunks draws the same tokens as one call.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSettings:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise ValueError(f"temperature must be a number >= 0 (0 is greedy), got {t!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be None or an int >= 1, got {self.top_k!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be None or a number in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be None or an int, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def key(self):
        """What changes the compiled graph (the values themselves are runtime tensors)."""
        if self.greedy:
            return ("greedy",)
        return ("sample", self.top_k is not None, self.top_p is not None)

    def tensors(self, default_seed):
        import numpy as np

        seed = self.seed if self.seed is not None else default_seed
        return (np.float32(max(self.temperature, 1e-6)), np.int32(self.top_k or 1), np.float32(self.top_p or 1.0),
                np.int32(seed % (2 ** 31)))


def next_token(logits, step, key, temperature, top_k, top_p, seed):
    """logits [B, V] -> int32 [B]. ``key`` is ``SamplerSettings.key`` (static)."""
    from kerasllm._tf import tf

    if key[0] == "greedy":
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    _, use_top_k, use_top_p = key
    logits = logits / temperature
    neg_inf = tf.constant(float("-inf"), logits.dtype)
    if use_top_k or use_top_p:
        ordered = tf.sort(logits, axis=-1, direction="DESCENDING")
    if use_top_k:
        k = tf.clip_by_value(top_k, 1, tf.shape(logits)[-1])
        kth = tf.gather(ordered, k - 1, axis=-1)[:, None]
        logits = tf.where(logits < kth, neg_inf, logits)
        ordered = tf.where(ordered < kth, neg_inf, ordered)
    if use_top_p:
        # keep the smallest set of most likely tokens whose probability reaches top_p
        before = tf.cumsum(tf.nn.softmax(ordered), axis=-1, exclusive=True)
        cutoff = tf.reduce_min(tf.where(before < top_p, ordered, float("inf")), axis=-1, keepdims=True)
        logits = tf.where(logits < cutoff, neg_inf, logits)
    noise = tf.random.stateless_uniform(tf.shape(logits), seed=tf.stack([seed, tf.cast(step, tf.int32)]),
                                        minval=1e-20, maxval=1.0)
    return tf.argmax(logits - tf.math.log(-tf.math.log(noise)), axis=-1, output_type=tf.int32)
