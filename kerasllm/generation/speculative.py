"""Speculative decoding: a small draft LM proposes ``k`` tokens, the target checks them all in one
cached forward pass (``call_with_cache`` on k + 1 tokens), inside one XLA ``while_loop``.

Greedy: the longest prefix of proposals equal to the target's argmax is kept, plus the target's own
token after it, so the output is the target's greedy output (up to float ties between a one-token
and a (k+1)-token forward pass). Sampling: the standard acceptance rule (Leviathan et al. 2023;
Chen et al. 2023): proposal d ~ q is kept with probability min(1, p(d) / q(d)); at the first
rejection the token is drawn from max(0, p - q) renormalised; if all k are kept a bonus token is
drawn from p. Each emitted token then follows the target's distribution p (``accept`` below is
that rule, tested statistically).

Limits: batch 1; prompt + new tokens within the target's and the draft's context (no cache rebuild);
temperature only (no top-k / top-p). Rejected proposals stay in the caches beyond the current slot,
where the attention mask never looks, and are overwritten by the next round.
"""
from __future__ import annotations

import numpy as np

from kerasllm.generation.samplers import TF, seed_word, uniforms

_STREAMS = (0x1234567, 0x2345678, 0x3456789)  # seed offsets: proposals, acceptance, correction


def _pick(probs, u):
    """Inverse-CDF draw: probs [B, V] (not necessarily normalised), u [B] -> int32 [B]."""
    from kerasllm._tf import tf

    cdf = tf.cumsum(probs, axis=-1)
    idx = tf.reduce_sum(tf.cast(cdf <= u[:, None] * cdf[:, -1:], tf.int32), axis=-1)
    return tf.minimum(idx, tf.shape(probs)[-1] - 1)


def accept(p, q, proposals, u_accept, u_final):
    """The acceptance rule. p [B, k+1, V] target probabilities (after the last token and after each
    proposal), q [B, k, V] draft probabilities, proposals [B, k], u_accept [B, k], u_final [B]
    -> (accepted count a [B], final token [B]): emit proposals[:, :a] then the final token."""
    from kerasllm._tf import tf

    k = tf.shape(proposals)[1]
    p_d = tf.gather(p[:, :-1], proposals, axis=-1, batch_dims=2)
    q_d = tf.gather(q, proposals, axis=-1, batch_dims=2)
    keep = u_accept * q_d < p_d  # u < p/q without dividing by a zero q
    a = tf.reduce_sum(tf.math.cumprod(tf.cast(keep, tf.int32), axis=1), axis=1)
    q_pad = tf.concat([q, tf.zeros_like(p[:, :1])], axis=1)  # after k accepted: the bonus from p itself
    residual = tf.maximum(tf.gather(p, a, batch_dims=1) - tf.gather(q_pad, a, batch_dims=1), 0.0)
    residual = tf.where(tf.reduce_sum(residual, -1, keepdims=True) > 0, residual, tf.gather(p, a, batch_dims=1))
    del k
    return a, _pick(residual, u_final)


def speculative_function(target, draft, k):
    """An XLA function (tokens [1, P], n, temperature, seed, cache_len static) -> (new [1, N], accepted, rounds)."""
    from kerasllm._tf import tf
    from kerasllm.models.ops import dynamic_update_slice

    def run(tokens, n, temperature, seed, buffer_len, cache_len):
        batch = 1
        pad = tf.zeros([batch], tf.int32)
        greedy = temperature <= 0.0
        t = tf.where(greedy, 1.0, temperature)
        t_logits, t_cache = target.prefill(tokens, pad, target.init_cache(batch, cache_len))
        _, d_cache = draft.prefill(tokens, pad, draft.init_cache(batch, cache_len))
        u0 = uniforms(seed + _STREAMS[2], 0, batch, TF)
        first = tf.where(greedy, tf.argmax(t_logits, -1, output_type=tf.int32), _pick(tf.nn.softmax(t_logits / t), u0))
        out = dynamic_update_slice(tf.zeros([batch, buffer_len], tf.int32), first[:, None], [0, 0])
        d_const = draft.decode_constants()
        width = tf.shape(tokens)[1]

        def body(n_out, last, t_cache, d_cache, out, accepted, rounds):
            pos = width + n_out - 1  # cache slot of `last`
            proposals, qs, tok = [], [], last
            for i in range(k + 1):  # the (k+1)-th step only writes d_k into the draft cache
                logits, d_cache = draft.decode(tok, pos + i, pad, d_cache, d_const)
                if i == k:
                    break
                q = tf.nn.softmax(logits / t)
                u = uniforms(seed + _STREAMS[0], n_out + i, batch, TF)
                tok = tf.where(greedy, tf.argmax(logits, -1, output_type=tf.int32), _pick(q, u))
                proposals.append(tok)
                qs.append(q)
            proposals = tf.stack(proposals, 1)  # [B, k]
            logits, t_cache = target.call_with_cache(tf.concat([last[:, None], proposals], 1), t_cache, pos, pad)
            target_argmax = tf.argmax(logits, -1, output_type=tf.int32)  # [B, k+1]
            a_greedy = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.equal(proposals, target_argmax[:, :k]), tf.int32),
                                                     axis=1), axis=1)
            u_acc = tf.stack([uniforms(seed + _STREAMS[1], n_out + i, batch, TF) for i in range(k)], 1)
            a_s, final_s = accept(tf.nn.softmax(logits / t), tf.stack(qs, 1), proposals, u_acc,
                                  uniforms(seed + _STREAMS[2], n_out, batch, TF))
            a = tf.where(greedy, a_greedy, a_s)
            final = tf.where(greedy, tf.gather(target_argmax, a, batch_dims=1), final_s)
            new = tf.where(tf.range(k + 1)[None] < a[:, None], tf.concat([proposals, proposals[:, :1]], 1),
                           final[:, None])
            out = dynamic_update_slice(out, new, [0, n_out])
            return n_out + a[0] + 1, final, t_cache, d_cache, out, accepted + a[0], rounds + 1

        init = (tf.constant(1), first, t_cache, d_cache, out, tf.constant(0), tf.constant(0))
        n_out, _, _, _, out, accepted, rounds = tf.while_loop(lambda n_out, *_: n_out < n, body, init)
        return out, accepted, rounds

    return run


class SpeculativeDecoder:
    """``generate_tokens(token_ids, max_new_tokens, temperature=0, seed=None)`` with a draft model.
    After a call, ``stats`` holds the acceptance rate (accepted proposals / proposals) and rounds."""

    def __init__(self, target, draft, k=4):
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k (draft tokens per round) must be an int >= 1, got {k!r}")
        if "transformer" != target.architecture or "transformer" != draft.architecture:
            raise ValueError("speculative decoding needs Transformer target and draft (an LSTM state cannot "
                             "take back rejected tokens)")
        if draft.vocab_size != target.vocab_size:
            raise ValueError(f"the draft's vocabulary ({draft.vocab_size}) must be the target's ({target.vocab_size})")
        self.target, self.draft, self.k = target, draft, k
        self._functions = {}
        self.stats = None

    def generate_tokens(self, token_ids, max_new_tokens=64, temperature=0.0, seed=None):
        from kerasllm.generation.samplers import SamplerSettings
        from kerasllm.generation.window import round_up
        from kerasllm.models.language_model_text import check_max_new_tokens

        tokens = self.target._token_rows(token_ids, crop=False)
        if tokens.shape[0] != 1:
            raise ValueError(f"speculative decoding takes one prompt (batch 1), got {tokens.shape[0]}")
        n = check_max_new_tokens(max_new_tokens)
        SamplerSettings(temperature, None, None, seed)  # validation
        limits = [c for c in (self.target.window_context, self.draft.window_context) if c is not None]
        if limits and tokens.shape[1] + n > min(limits):
            raise ValueError(f"prompt ({tokens.shape[1]}) + max_new_tokens ({n}) must fit the context "
                             f"({min(limits)}): speculative decoding does not rebuild the cache")
        if n == 0:
            return tokens
        buffer_len = round_up(n + self.k + 1, 32)
        cache_len = round_up(tokens.shape[1] + n + self.k + 1, 32)
        key = (tokens.shape[1], buffer_len, cache_len)
        if key not in self._functions:
            from kerasllm._tf import tf

            run = speculative_function(self.target.model, self.draft.model, self.k)
            self._functions[key] = tf.function(
                lambda x, n, t, s: run(x, n, t, s, buffer_len, cache_len), jit_compile=True)
        out, accepted, rounds = self._functions[key](tokens, np.int32(n), np.float32(temperature),
                                                     np.int32(seed_word(seed)))
        rounds = int(rounds)
        self.stats = {"acceptance_rate": int(accepted) / max(rounds * self.k, 1), "rounds": rounds,
                      "tokens_per_round": n / max(rounds, 1)}
        return np.concatenate([tokens, out.numpy()[:, :n]], axis=1)
