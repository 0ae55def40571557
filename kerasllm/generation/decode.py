"""The compiled decode loop: prefill, then a ``while_loop`` of cached steps with sampling inside,
all one XLA function per static shape (batch, prompt length, cache length, sampler kind).

The model provides ``init_cache(batch, length)``, ``prefill(tokens, pad, cache)`` and
``decode(token, pos, pad, cache)`` (see ``kerasllm.models.transformer_lm``). Python runs once
per call (or once per chunk when streaming), never per token.
"""
from __future__ import annotations

import numpy as np

from kerasllm.generation.samplers import SamplerSettings, next_token

CHUNK = 32  # new-token buffers are sized in multiples of this, so nearby lengths share one compiled function


def _round_up(n, m):
    return -(-n // m) * m


def _loop(model, logits, cache, pos0, pad, n_new, step0, buffer, key, temperature, top_k, top_p, seed, sampler=None):
    """Sample ``n_new`` tokens; each is fed back through ``model.decode``. Returns (tokens [B, N], logits, cache).
    ``sampler`` (default ``next_token``) has ``next_token``'s signature."""
    from kerasllm._tf import tf
    from kerasllm.models.ops import dynamic_update_slice

    batch, size = buffer.shape
    constants = model.decode_constants()

    def body(i, logits, cache, out):
        token = (sampler or next_token)(logits, step0 + i, key, temperature, top_k, top_p, seed)
        out = dynamic_update_slice(out, token[:, None], [0, i])
        logits, cache = model.decode(token, pos0 + i, pad, cache, constants)
        return i + 1, logits, cache, out

    _, logits, cache, out = tf.while_loop(lambda i, *_: i < n_new, body, (tf.constant(0), logits, cache, buffer),
                                          maximum_iterations=size)
    return out, logits, cache


class Decoder:
    """Compiled generation for one model; caches one XLA function per static shape."""

    def __init__(self, model, context_length=None):
        self.model = model
        self.context_length = context_length  # None: no position limit (LSTM)
        self._functions = {}

    def _start(self, batch, prompt_len, cache_len, new_len, key):
        k = ("start", batch, prompt_len, cache_len, new_len, key)
        if k not in self._functions:
            from kerasllm._tf import tf

            model = self.model

            @tf.function(jit_compile=True, reduce_retracing=False)
            def start(tokens, pad, n_new, step0, temperature, top_k, top_p, seed):
                cache = model.init_cache(batch, cache_len)
                logits, cache = model.prefill(tokens, pad, cache)
                buffer = tf.zeros([batch, new_len], tf.int32)
                return _loop(model, logits, cache, prompt_len, pad, n_new, step0, buffer, key,
                             temperature, top_k, top_p, seed)

            self._functions[k] = start
        return self._functions[k]

    def _resume(self, batch, cache_len, new_len, key):
        k = ("resume", batch, cache_len, new_len, key)
        if k not in self._functions:
            from kerasllm._tf import tf

            model = self.model

            @tf.function(jit_compile=True, reduce_retracing=False)
            def resume(logits, cache, pos0, pad, n_new, step0, temperature, top_k, top_p, seed):
                buffer = tf.zeros([batch, new_len], tf.int32)
                return _loop(model, logits, cache, pos0, pad, n_new, step0, buffer, key,
                             temperature, top_k, top_p, seed)

            self._functions[k] = resume
        return self._functions[k]

    def chunks(self, tokens, pad, max_new_tokens, settings: SamplerSettings, chunk=None, default_seed=0):
        """Yield int32 arrays [B, n] of new tokens, ``chunk`` at a time (all at once when None).

        ``tokens`` [B, P] are left-padded with ``pad`` [B] leading pads. When prompt plus new
        tokens outgrow the model's context, the cache is rebuilt from the last half-context of
        tokens and decoding goes on (the same rule as cropping the input to the context)."""
        tokens = np.asarray(tokens, np.int32)
        pad = np.asarray(pad, np.int32)
        batch = tokens.shape[0]
        scalars = settings.tensors(default_seed)
        ctx = self.context_length
        produced, step = 0, np.int32(0)
        history = tokens
        while produced < max_new_tokens:
            # (re)prefill on the most recent tokens that leave room to generate
            window = history
            if ctx is not None:
                keep = ctx // 2 if produced else max(1, ctx - min(max_new_tokens, ctx // 2))
                window = history[:, -keep:] if history.shape[1] > keep else history
            cut = history.shape[1] - window.shape[1]
            w_pad = np.maximum(pad - cut, 0).astype(np.int32)
            p = window.shape[1]
            planned = max_new_tokens - produced if ctx is None else min(max_new_tokens - produced, ctx - p)
            new_len = _round_up(planned, CHUNK)
            if ctx is not None:
                new_len = min(new_len, ctx - p)
            cache_len = p + new_len
            n = min(planned, chunk or planned)
            out, logits, cache = self._start(batch, p, cache_len, new_len, settings.key)(
                window, w_pad, np.int32(n), step, *scalars)
            pos = p
            while True:
                new = out.numpy()[:, :n]
                history = np.concatenate([history, new], axis=1)
                produced += n
                step = np.int32(step + n)
                pos += n
                yield new
                left = planned - (pos - p)
                if produced >= max_new_tokens or left <= 0:
                    break
                n = min(left, chunk or left)
                out, logits, cache = self._resume(batch, cache_len, new_len, settings.key)(
                    logits, cache, np.int32(pos), w_pad, np.int32(n), step, *scalars)

    def generate(self, tokens, pad, max_new_tokens, settings, default_seed=0):
        parts = list(self.chunks(tokens, pad, max_new_tokens, settings, default_seed=default_seed))
        tokens = np.asarray(tokens, np.int32)
        return np.concatenate([tokens] + parts, axis=1) if parts else tokens


def generate_uncached(model, tokens, max_new_tokens, context_length=None):
    """Greedy reference without a cache: run the whole sequence again for every new token.

    While everything fits the context, the sequence sits in a fixed-size buffer (zeros after the
    current length; causal attention never looks at them), so one compiled forward pass serves
    every step; past the context the input is cropped to the last ``context_length`` tokens."""
    from kerasllm._tf import tf

    @tf.function(jit_compile=getattr(model, "architecture", None) != "lstm", reduce_retracing=True)
    def logits_at(x, index):
        return tf.gather(model(x), index, axis=1)

    seq = np.asarray(tokens, np.int32)
    batch, prompt_len = seq.shape
    total = prompt_len + max_new_tokens
    if context_length is None or total <= context_length:
        buffer = np.zeros((batch, total), np.int32)
        buffer[:, :prompt_len] = seq
        for t in range(prompt_len, total):
            buffer[:, t] = np.argmax(logits_at(buffer, np.int32(t - 1)).numpy(), axis=-1)
        return buffer
    for _ in range(max_new_tokens):
        window = seq[:, -context_length:]
        nxt = np.argmax(logits_at(window, np.int32(window.shape[1] - 1)).numpy(), axis=-1).astype(np.int32)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq
