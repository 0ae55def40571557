"""Speculative decoding (Leviathan et al. 2023, Chen et al. 2023) inside one XLA-compiled loop.

Each round a small draft LM proposes ``k`` tokens one at a time with its own key/value cache; the
target LM scores all of them in ONE cached forward pass (``call_with_cache`` over ``k + 1`` tokens:
the last kept token and the ``k`` proposals) and keeps the longest prefix it agrees with plus one
token of its own, so a round yields 1 to ``k + 1`` tokens for one target pass.

- Greedy: a proposal is kept while it is the target's argmax, and the target's argmax follows, so
  the output is token-for-token the target's own greedy output.
- Sampling (``accept_rule``): proposal ``d ~ q`` is kept with probability ``min(1, p(d) / q(d))``; at
  the first rejection the token is drawn from ``norm(max(0, p - q))``; when all ``k`` are kept a
  bonus token is drawn from the target's next distribution. Each token is then distributed as the
  target's ``p``, the target's logits after the same temperature / top-k / top-p as plain decoding.

Batches: rows share one cache slot index (the cache layout of ``kerasllm.models.transformer_lm``), so
every row keeps the same number of tokens per round: the fewest any row accepted. That is still
exact (a row's kept token at that position is its accepted proposal or its correction, either way
distributed as ``p``; where to stop depends only on the other rows' independent draws), but the
speed-up shrinks with the batch; it is largest at batch 1.

Caches: rejected proposals leave stale entries in cache slots after the kept tokens; a query only
reads slots up to its own, and each stale slot is rewritten before any query reads it. The draft
re-feeds the previous token with the new one each round (one 2-token call), which fills the slot it
never saw when all ``k`` proposals were kept.

Both models must be Transformers (an LSTM's state cannot be rolled back) with the same vocabulary.
Thread safety: a ``SpeculativeDecoder`` fills its cache of compiled functions without a lock (two
threads may compile one shape twice: wasteful, correct).
"""
from __future__ import annotations

import secrets

import numpy as np

CHUNK = 32  # buffers and cache lengths are rounded up to this, so nearby lengths share a compiled function
MAX_SPECULATIVE = 16


def _round_up(n, m):
    return -(-n // m) * m


# --- the rule, on probabilities (TensorFlow; runs inside XLA and eagerly in the tests) ---------------------
def sample_from(probs, u):
    """Inverse-CDF draw: probs [..., V] (non-negative, any positive total), u [...] in [0, 1) -> int32 [...]."""
    from kerasllm._tf import tf

    cdf = tf.cumsum(probs, axis=-1)
    below = tf.reduce_sum(tf.cast(cdf <= u[..., None] * cdf[..., -1:], tf.int32), axis=-1)
    return tf.minimum(below, tf.shape(probs)[-1] - 1)  # a zero-probability token is never drawn


def _leading(ok):
    """Per row, how many leading entries of ok [B, k] are True -> int32 [B]."""
    from kerasllm._tf import tf

    return tf.reduce_sum(tf.math.cumprod(tf.cast(ok, tf.int32), axis=-1), axis=-1)


def accept_rule(p, q, proposals, u_accept, u_fix):
    """The speculative sampling rule for one round.

    p [B, k + 1, V]: target probabilities at the k proposal positions and one after; q [B, k, V]:
    the draft probabilities the proposals [B, k] were drawn from; u_accept [B, k], u_fix [B, k + 1]:
    independent uniforms in [0, 1). Returns (accepted [B]: how many leading proposals each row
    keeps, tokens [B, k + 1]: at j < k the proposal if accepted, else a draw from
    norm(max(0, p_j - q_j)); at k a draw from p_k). A row emits tokens[:, :accepted + 1]."""
    from kerasllm._tf import tf

    k = proposals.shape[1]
    at = proposals[..., None]
    p_d = tf.gather(p[:, :k], at, batch_dims=2)[..., 0]
    q_d = tf.gather(q, at, batch_dims=2)[..., 0]
    ok = u_accept * q_d < p_d  # probability min(1, p/q); never when p(d) = 0
    residual = tf.maximum(p[:, :k] - q, 0.0)
    # p == q leaves no residual (and no rejection but by rounding): then draw from p itself
    residual = tf.where(tf.reduce_sum(residual, -1, keepdims=True) > 0, residual, p[:, :k])
    fix = sample_from(tf.concat([residual, p[:, k:]], axis=1), u_fix)
    tokens = tf.concat([tf.where(ok, proposals, fix[:, :k]), fix[:, k:]], axis=1)
    return _leading(ok), tokens


def greedy_rule(target_logits, proposals):
    """Greedy: tokens [B, k + 1] are the target's argmax; proposals are kept while they equal it."""
    from kerasllm._tf import tf

    tokens = tf.argmax(target_logits, axis=-1, output_type=tf.int32)
    return _leading(tokens[:, :-1] == proposals), tokens


def probabilities(logits, temperature, top_k, top_p, use_top_k, use_top_p):
    """softmax(logits / temperature) over the top_k most likely tokens (0: all) and the smallest set
    reaching top_p (1: all): the distribution plain sampling draws from. logits [..., V]."""
    from kerasllm._tf import tf

    z = logits / temperature
    neg_inf = tf.constant(float("-inf"), z.dtype)
    if use_top_k:
        ordered = tf.sort(z, axis=-1, direction="DESCENDING")
        kth = tf.gather(ordered, tf.clip_by_value(top_k - 1, 0, tf.shape(z)[-1] - 1), axis=-1)[..., None]
        z = tf.where((top_k > 0) & (z < kth), neg_inf, z)
    if use_top_p:
        ordered = tf.sort(z, axis=-1, direction="DESCENDING")
        probs = tf.nn.softmax(ordered)
        before = tf.cumsum(probs, axis=-1, exclusive=True)  # mass of the more likely tokens
        cutoff = tf.reduce_min(tf.where(before < top_p, ordered, float("inf")), axis=-1, keepdims=True)
        z = tf.where((top_p < 1) & (z < cutoff), neg_inf, z)
    return tf.nn.softmax(z)


# --- the compiled loop ---------------------------------------------------------------------------------
def _check_pair(target, draft):
    for name, m in (("target", target), ("draft", draft)):
        if getattr(m, "architecture", None) != "transformer":
            raise ValueError(f"speculative decoding needs Transformer models (an LSTM cache cannot be rolled "
                             f"back); the {name} is {getattr(m, 'architecture', type(m).__name__)!r}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(f"draft and target must share the vocabulary: draft vocab_size "
                         f"{draft.config.vocab_size}, target {target.config.vocab_size}")
    if draft.config.context_length < target.config.context_length:
        raise ValueError(f"the draft's context_length ({draft.config.context_length}) must be at least the "
                         f"target's ({target.config.context_length})")


def _sampling_key(settings):
    if settings.temperature == 0:
        return ("greedy",)
    return ("sample", bool(settings.top_k), settings.top_p is not None and settings.top_p < 1)


class SpeculativeDecoder:
    """Compiled speculative generation for one (target, draft) pair of Keras Transformer LMs
    (``model`` objects with ``init_cache``/``prefill``/``call_with_cache``/``decode_constants``)."""

    def __init__(self, target, draft):
        _check_pair(target, draft)
        self.target, self.draft = target, draft
        self.context_length = target.config.context_length
        self._functions = {}

    def _function(self, batch, width, cache_len, buffer_len, k, key):
        sig = (batch, width, cache_len, buffer_len, k, key)
        if sig not in self._functions:
            from kerasllm._tf import tf

            self._functions[sig] = tf.function(self._program(batch, cache_len, buffer_len, k, key),
                                               jit_compile=True, reduce_retracing=False)
        return self._functions[sig]

    def _program(self, batch, cache_len, buffer_len, k, key):
        from kerasllm._tf import tf
        from kerasllm.models.ops import dynamic_update_slice

        target, draft = self.target, self.draft
        greedy = key[0] == "greedy"
        use_top_k, use_top_p = (False, False) if greedy else key[1:]

        def run(tokens, pad, count, seed, temperature, top_k, top_p):
            def probs(logits):
                return probabilities(logits, temperature, top_k, top_p, use_top_k, use_top_p)

            def draws(counter, n):  # counter-based: (seed, round) -> uniforms [B, n]
                return tf.random.stateless_uniform([batch, n], seed=tf.stack([seed, counter]))

            def pick(logits, u):
                return tf.argmax(logits, -1, output_type=tf.int32) if greedy else sample_from(probs(logits), u)

            t_const, d_const = target.decode_constants(), draft.decode_constants()
            t_logits, t_cache = target.prefill(tokens, pad, target.init_cache(batch, cache_len))
            _, d_cache = draft.prefill(tokens, pad, draft.init_cache(batch, cache_len))
            width = tokens.shape[1]
            first = pick(t_logits, draws(0, 1)[:, 0])
            out = dynamic_update_slice(tf.zeros([batch, buffer_len], tf.int32), first[:, None], [0, 0])

            def body(i, rounds, kept, prev, tok, t_cache, d_cache, out):
                index = width + i - 1  # cache slot of ``tok``, the newest token (in neither cache yet)
                u = draws(rounds + 1, 3 * k + 1)
                # draft: k proposals; the first call also (re)writes ``prev`` at index - 1
                logits, d_cache = draft.call_with_cache(tf.stack([prev, tok], 1), d_cache, index - 1, pad, d_const)
                logits = logits[:, -1]
                proposals, qs = [], []
                for j in range(k):
                    if greedy:
                        d = tf.argmax(logits, -1, output_type=tf.int32)
                    else:
                        qs.append(probs(logits))
                        d = sample_from(qs[-1], u[:, j])
                    proposals.append(d)
                    if j < k - 1:
                        logits, d_cache = draft.call_with_cache(d[:, None], d_cache, index + 1 + j, pad, d_const)
                        logits = logits[:, 0]
                proposals = tf.stack(proposals, 1)
                # target: verify all k in one cached pass over k + 1 tokens
                t_logits, t_cache = target.call_with_cache(tf.concat([tok[:, None], proposals], 1), t_cache,
                                                           index, pad, t_const)
                if greedy:
                    accepted, new = greedy_rule(t_logits, proposals)
                else:
                    accepted, new = accept_rule(probs(t_logits), tf.stack(qs, 1), proposals, u[:, k:2 * k],
                                                u[:, 2 * k:])
                n = tf.reduce_min(accepted)  # rows share the cache index: all keep the fewest accepted
                out = dynamic_update_slice(out, new, [0, i])  # tokens after n are overwritten later
                seq = tf.concat([tok[:, None], new], 1)
                return (i + n + 1, rounds + 1, kept + n, seq[:, n], seq[:, n + 1], t_cache, d_cache, out)

            init = (tf.constant(1), tf.constant(0), tf.constant(0), tokens[:, -1], first, t_cache, d_cache, out)
            i, rounds, kept, *_, out = tf.while_loop(lambda i, *_: i < count, body, init,
                                                     maximum_iterations=buffer_len)
            return out, rounds, kept, i

        return run

    def generate(self, tokens, pad, max_new_tokens, settings, num_speculative=4, seed=None):
        """tokens [B, W] left-padded (``pad`` [B] leading pads) -> (new tokens int32 [B, max_new_tokens],
        stats: rounds, proposed, accepted, acceptance_rate (of proposals, batch-wide), tokens_per_round).

        Covers generation inside the context window: prompt (without its padding) plus new tokens must
        fit ``context_length + 1`` (the last new token is predicted from a full window)."""
        k = num_speculative
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_SPECULATIVE:
            raise ValueError(f"num_speculative must be an int in [1, {MAX_SPECULATIVE}], got {k!r}")
        tokens = np.asarray(tokens, np.int32)
        pad = np.asarray(pad, np.int32)
        batch, width = tokens.shape
        real = width - int(pad.min())
        if real + max_new_tokens - 1 > self.context_length:
            raise ValueError(f"speculative decoding runs inside the context window: prompt ({real} tokens) + "
                             f"max_new_tokens ({max_new_tokens}) must be at most context_length + 1 = "
                             f"{self.context_length + 1}; decode without a draft to go past the context")
        if max_new_tokens == 0:
            return np.zeros((batch, 0), np.int32), {"rounds": 0, "proposed": 0, "accepted": 0,
                                                     "acceptance_rate": float("nan"), "tokens_per_round": float("nan")}
        key = _sampling_key(settings)
        # slots written: the prompt, then up to index + k where index < width + max_new_tokens - 1
        cache_len = _round_up(width + max_new_tokens + k, CHUNK)
        buffer_len = _round_up(max_new_tokens + k + 1, CHUNK)
        seed = secrets.randbelow(2 ** 31) if settings.seed is None and seed is None else \
            int(settings.seed if seed is None else seed) % 2 ** 31
        params = (np.float32(max(settings.temperature, 1e-6)), np.int32(settings.top_k or 0),
                  np.float32(1.0 if settings.top_p is None else settings.top_p))
        out, rounds, kept, emitted = self._function(batch, width, cache_len, buffer_len, k, key)(
            tokens, pad, np.int32(max_new_tokens), np.int32(seed), *params)
        rounds, kept, emitted = int(rounds), int(kept), int(emitted)
        stats = {"rounds": rounds, "proposed": rounds * k, "accepted": kept,
                 "acceptance_rate": kept / (rounds * k) if rounds else float("nan"),
                 "tokens_per_round": (emitted - 1) / rounds if rounds else float("nan")}
        return out.numpy()[:, :max_new_tokens], stats


def decoder_for(target_lm, draft_lm):
    """The ``SpeculativeDecoder`` of two ``LanguageModel``s, kept on the target (one per draft)."""
    if not hasattr(draft_lm, "model"):
        raise TypeError(f"draft must be a LanguageModel, got {type(draft_lm).__name__}")
    tok_t, tok_d = getattr(target_lm, "tokenizer", None), getattr(draft_lm, "tokenizer", None)
    if tok_t is not None and tok_d is not None and tok_t.get_config() != tok_d.get_config():
        raise ValueError("draft and target must use the same tokenizer (train the draft with "
                         "train_language_model(..., teacher=target))")
    cache = target_lm.__dict__.setdefault("_speculative", {})
    if id(draft_lm) not in cache or cache[id(draft_lm)][0] is not draft_lm:
        cache[id(draft_lm)] = (draft_lm, SpeculativeDecoder(target_lm.model, draft_lm.model))
    return cache[id(draft_lm)][1]


class _Bound:
    """A ``SpeculativeDecoder`` with its ``k``, shaped like ``Decoder.chunks`` for the text API
    (yields all new tokens at once; any chunk size asked for is ignored)."""

    def __init__(self, decoder, num_speculative):
        self.decoder, self.num_speculative = decoder, num_speculative

    def chunks(self, tokens, pad, max_new_tokens, settings, *_, **__):
        yield self.decoder.generate(tokens, pad, max_new_tokens, settings, self.num_speculative)[0]


def speculative_decoder(target_lm, draft_lm, num_speculative):
    """What ``LanguageModel.generate(..., draft=, num_speculative=)`` decodes with."""
    return _Bound(decoder_for(target_lm, draft_lm), num_speculative)


def generate_tokens(target_lm, draft_lm, tokens, pad, max_new_tokens, settings, num_speculative):
    """``LanguageModel.generate_tokens(..., draft=)``: prompt + new tokens, int32 [B, P + max_new_tokens]."""
    new = decoder_for(target_lm, draft_lm).generate(tokens, pad, max_new_tokens, settings, num_speculative)[0]
    return np.concatenate([np.asarray(tokens, np.int32), new], axis=1)
