"""The compiled decode loop for a Keras language model: per segment of the window plan
(``kerasllm.generation.window``), one XLA function prefills the window and runs the sampler's
``tf.while_loop`` of cached decode steps (``kerasllm.generation.samplers.Sampler``); Python runs
once per segment (or per chunk when streaming), never per token.

Compiled functions are cached per static shape (batch, window width, cache length, buffer length,
sampler kind); widths and lengths are rounded up so nearby prompt lengths share one.
"""
from __future__ import annotations

import numpy as np

from kerasllm.generation.samplers import SamplerSettings
from kerasllm.generation.window import PAD_MULTIPLE, cache_slots, round_up, segments, window

CHUNK = 32  # new-token buffers and cache lengths are sized in multiples of this


class Decoder:
    """Compiled generation for one model (``context_length`` None: no window, the LSTM).

    Thread safety: the cache of compiled functions is filled without a lock; two threads may
    compile the same shape twice, which is wasteful but correct."""

    def __init__(self, model, context_length=None):
        self.model = model
        self.context_length = context_length
        self._functions = {}

    def _function(self, kind, batch, width, cache_len, buffer_len, sampler):
        k = (kind, batch, width, cache_len, buffer_len, sampler.key)
        if k not in self._functions:
            from kerasllm._tf import tf

            model = self.model
            if kind == "start":
                def fn(tokens, pad, count, step0, seed, temperature, top_k, top_p):
                    cache = model.init_cache(batch, cache_len)
                    buffer = tf.zeros([batch, buffer_len], tf.int32)
                    return sampler.start(model, tokens, pad, cache, count, step0, seed,
                                         (temperature, top_k, top_p), buffer)
            else:
                def fn(token, cache, index, pad, count, step0, seed, temperature, top_k, top_p):
                    buffer = tf.zeros([batch, buffer_len], tf.int32)
                    return sampler.resume(model, token, cache, index, pad, count, step0, seed,
                                          (temperature, top_k, top_p), buffer)
            self._functions[k] = tf.function(fn, jit_compile=True, reduce_retracing=False)
        return self._functions[k]

    def chunks(self, tokens, pad, max_new_tokens, settings: SamplerSettings, seed, chunk=None):
        """Yield int32 arrays [B, n] of new tokens, at most ``chunk`` at a time (a segment at a time
        when None). ``tokens`` [B, W] are left-padded with ``pad`` [B] leading pads; ``seed`` is the
        int32 seed of this call (``samplers.seed_word``)."""
        history = np.asarray(tokens, np.int32)
        pad = np.asarray(pad, np.int32)
        batch = history.shape[0]
        sampler, params = settings.sampler(), settings.params()
        seed = np.int32(seed)
        step = 0
        for seg in segments(history.shape[1] - int(pad.min()), max_new_tokens, self.context_length):
            win, w_pad = window(history, pad, seg, PAD_MULTIPLE)
            width = win.shape[1]
            n = min(seg.count, chunk or seg.count)
            # one buffer size per model and chunk size: fewer compiled functions
            buffer_len = round_up(chunk or (self.context_length + 1 if self.context_length else n), CHUNK)
            cache_len = cache_slots(width, seg.count) if self.context_length else 0
            out, cache, last = self._function("start", batch, width, cache_len, buffer_len, sampler)(
                win, w_pad, np.int32(n), np.int32(step), seed, *params)
            done, index = 0, width + n - 1  # the last token's cache slot (decoded by the next resume)
            while True:
                new = out.numpy()[:, :n]
                history = np.concatenate([history, new], axis=1)
                step, done = step + n, done + n
                yield new
                if done >= seg.count:
                    break
                n = min(seg.count - done, chunk or seg.count)
                out, cache, last = self._function("resume", batch, width, cache_len, buffer_len, sampler)(
                    last, cache, np.int32(index), w_pad, np.int32(n), np.int32(step), seed, *params)
                index += n


def generate_uncached(model, tokens, max_new_tokens, context_length=None):
    """Greedy reference without a cache: for every new token, run the model on the whole window the
    plan (``kerasllm.generation.window``) gives that token. The window sits at the start of a
    fixed-size zero buffer (causal attention never looks at the zeros after it), so one compiled
    forward pass serves every step."""
    from kerasllm._tf import tf

    @tf.function(jit_compile=getattr(model, "architecture", None) != "lstm", reduce_retracing=True)
    def logits_at(x, index):
        return tf.gather(model(x), index, axis=1)

    seq = np.asarray(tokens, np.int32)
    batch, prompt_len = seq.shape
    width = context_length or prompt_len + max_new_tokens
    for seg in segments(prompt_len, max_new_tokens, context_length):
        for _ in range(seg.count):
            win = seq[:, seg.start:]
            buffer = np.zeros((batch, width), np.int32)
            buffer[:, :win.shape[1]] = win
            nxt = np.argmax(logits_at(buffer, np.int32(win.shape[1] - 1)).numpy(), axis=-1).astype(np.int32)
            seq = np.concatenate([seq, nxt[:, None]], axis=1)
    return seq
