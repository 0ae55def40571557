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

Past the context, generation follows the same window plan as plain decoding
(``kerasllm.generation.window``): each segment prefills its window into both caches and runs the
speculative loop for that segment's tokens, so greedy output equals plain greedy output there too.

Prompt lookup (``draft="prompt_lookup"``, no draft model; Saxena 2023, ``prompt_lookup_num_tokens`` in
Hugging Face transformers): the proposals are the k tokens that followed the most recent earlier
occurrence of the last 3 (else 2, else 1) tokens in the window and the new tokens (a repeating stretch
is continued with its period). A round where a row has no such occurrence is one plain decode step
for the batch (no verify pass over unlikely proposals). Sampling treats the proposals as drawn from a point mass ``q``,
so the same rule keeps each token distributed as ``p``. It pays where the output repeats the prompt
or itself (copying, editing, quoting; a weak model looping), and costs a plain step elsewhere.

Draft vocabulary (``draft_vocab``): a draft step's cost is mostly its vocabulary head (hidden x V,
read from memory every step). ``draft_vocab=N`` projects onto the first N token ids only (byte-level
BPE: the 256 bytes and the earliest, most frequent merges), or onto a given list of ids: the draft then
never proposes the other tokens (the target's own token still can be any). Its distribution ``q`` is
zero outside the list, which the acceptance rule allows, so greedy and sampled output are unchanged.

Use: ``lm.with_draft(draft_lm, num_speculative=4)`` -> a ``SpeculativeDecoder`` with the whole
generation API (``generate``, ``generate_tokens``, ``stream``, stop rules). Both models must be
Transformers (an LSTM's state cannot take back rejected tokens) with the same vocabulary, and the
draft's context at least the target's. Random numbers come from the counter-based generator of
``kerasllm.generation.samplers`` (a seed repeats a sample; ``seed=None`` is fresh per call).

Thread safety: compiled functions are cached without a lock (two threads may compile one shape
twice: wasteful, correct); ``stats`` (acceptance of the last call) is per object, not per thread.
"""
from __future__ import annotations

import secrets

import numpy as np

from kerasllm.generation.samplers import TF, SamplerSettings, uniforms
from kerasllm.generation.window import PAD_MULTIPLE, round_up, segments, window
from kerasllm.models.language_model_text import GenerationAPI

CHUNK = 32  # buffers are rounded up to this, so nearby lengths share a compiled function
MAX_SPECULATIVE = 16
_STREAMS = (0x1234567, 0x2345678, 0x3456789)  # seed offsets: proposals, acceptance, final token


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


def accept_rule(p, q, proposals, u_accept, u_final):
    """The speculative sampling rule for one round.

    p [B, k + 1, V]: target probabilities at the k proposal positions and one after; q [B, k, V]:
    the draft probabilities the proposals [B, k] were drawn from; u_accept [B, k], u_final [B]:
    independent uniforms in [0, 1). Returns (accepted [B]: how many leading proposals each row
    keeps, tokens [B, k + 1]: at j < k the proposal if accepted, else a draw from
    norm(max(0, p_j - q_j)); at k a draw from p_k). A row emits tokens[:, :n + 1] for any
    n <= accepted (a batch uses its smallest): only one correction per row is ever emitted, so
    one ``u_final`` serves them all."""
    from kerasllm._tf import tf

    k = proposals.shape[1]
    at = proposals[..., None]
    p_d = tf.gather(p[:, :k], at, batch_dims=2)[..., 0]
    q_d = tf.gather(q, at, batch_dims=2)[..., 0]
    ok = u_accept * q_d < p_d  # probability min(1, p/q); never when p(d) = 0
    residual = tf.maximum(p[:, :k] - q, 0.0)
    # p == q leaves no residual (and no rejection but by rounding): then draw from p itself
    residual = tf.where(tf.reduce_sum(residual, -1, keepdims=True) > 0, residual, p[:, :k])
    fix = sample_from(tf.concat([residual, p[:, k:]], axis=1), tf.tile(u_final[:, None], [1, k + 1]))
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


LOOKUP_NGRAM = 3  # prompt lookup matches the last 3 tokens, else 2, else 1
PROMPT_LOOKUP = "prompt_lookup"


def lookup_proposals(seq, last, pad, k, max_ngram=LOOKUP_NGRAM):
    """Prompt-lookup proposals. seq [B, L] int32 (left-padded window, then new tokens), ``last`` the
    position of the newest token (scalar), pad [B] -> (proposals [B, k], found [B] bool). A row's
    match is the latest end position e < last with seq[e - g + 1 .. e] == seq[last - g + 1 .. last]
    for the longest g <= max_ngram that has one (only real tokens, not pads); its proposals are
    seq[e + 1 + (j mod (last - e))], j < k: what followed, repeated with the stretch's period."""
    from kerasllm._tf import tf

    batch, length = tf.shape(seq)[0], seq.shape[1]
    ends = tf.range(length)[None, :]
    best = tf.fill([batch], -1)
    for g in range(1, max_ngram + 1):  # a longer n-gram's match replaces a shorter one's
        key = tf.gather(seq, tf.maximum(last - g + 1 + tf.range(g), 0), axis=1)  # [B, g]
        match = (ends < last) & (ends - g + 1 >= pad[:, None]) & (last - g + 1 >= pad[:, None])
        for t in range(g):  # seq[e - t] == key[g - 1 - t]
            shifted = tf.pad(seq, [[0, 0], [t, 0]], constant_values=-1)[:, :length]
            match &= shifted == key[:, g - 1 - t, None]
        found_g = tf.reduce_max(tf.where(match, ends, -1), axis=1)
        best = tf.where(found_g >= 0, found_g, best)
    found = best >= 0
    period = tf.maximum(last - best, 1)
    at = tf.where(found, best, 0)[:, None] + 1 + tf.range(k)[None, :] % period[:, None]
    return tf.gather(seq, at, batch_dims=1), found


# --- the compiled loop ---------------------------------------------------------------------------------
def speculative_function(target, draft, batch, cache_len, buffer_len, k, key, draft_vocab=None):
    """The XLA program for one shape: (window tokens [B, W], pad [B], count, step0, seed, temperature,
    top_k, top_p) -> (new tokens [B, buffer_len] (the first ``count`` are the answer), rounds, kept,
    plain steps). ``target``/``draft`` are Keras models with ``init_cache``/``prefill``/``call_with_cache``
    (the draft also ``hidden_with_cache``/``logits``); ``draft`` None: prompt lookup proposes.
    ``draft_vocab``: int32 token ids [N] the draft's head is restricted to (None: all)."""
    from kerasllm._tf import tf
    from kerasllm.models.ops import dynamic_update_slice

    greedy = key[0] == "greedy"
    use_top_k, use_top_p = (False, False) if greedy else key[1:]

    def run(tokens, pad, count, step0, seed, temperature, top_k, top_p):
        def probs(logits):
            return probabilities(logits, temperature, top_k, top_p, use_top_k, use_top_p)

        def draws(stream, step):  # counter-based uniforms [B]: (seed, stream, step, row)
            return uniforms(seed + _STREAMS[stream], step0 + step, batch, TF)

        def pick(logits, i):  # one token from the target's logits [B, V], as the plain loop picks it
            return tf.argmax(logits, -1, output_type=tf.int32) if greedy else sample_from(probs(logits), draws(2, i))

        t_const = target.decode_constants()
        t_logits, t_cache = target.prefill(tokens, pad, target.init_cache(batch, cache_len))
        d_cache, d_const = (), None
        if draft is not None:
            d_const = draft.decode_constants()  # the output matrix [hidden, V]
            if draft_vocab is not None:  # only its columns for draft_vocab: a draft logit j is token draft_vocab[j]
                d_const = tf.gather(d_const, draft_vocab, axis=1)
            _, d_cache = draft.prefill(tokens, pad, draft.init_cache(batch, cache_len))
        width = tokens.shape[1]
        first = pick(t_logits, 0)
        out = dynamic_update_slice(tf.zeros([batch, buffer_len], tf.int32), first[:, None], [0, 0])

        def propose(i, index, prev, tok, d_cache):
            """k draft proposals [B, k] and their probabilities ([B, k, V], None when greedy)."""
            # the first call also (re)writes ``prev`` at index - 1
            hidden, d_cache = draft.hidden_with_cache(tf.stack([prev, tok], 1), d_cache, index - 1, pad)
            logits = draft.logits(hidden[:, -1:], d_const)[:, 0]  # the head (most of a draft's cost) on one row
            proposals, qs = [], []
            for j in range(k):
                if greedy:
                    d = tf.argmax(logits, -1, output_type=tf.int32)
                else:
                    qs.append(probs(logits))
                    d = sample_from(qs[-1], draws(0, i + j))
                d = d if draft_vocab is None else tf.gather(draft_vocab, d)  # a token id
                proposals.append(d)
                if j < k - 1:
                    logits, d_cache = draft.call_with_cache(d[:, None], d_cache, index + 1 + j, pad, d_const)
                    logits = logits[:, 0]
            q = None if greedy else tf.stack(qs, 1)  # [B, k, N]
            if q is not None and draft_vocab is not None:  # zero outside draft_vocab: [B, k, V]
                vocab = t_const.shape[-1]
                q = tf.transpose(tf.scatter_nd(draft_vocab[:, None], tf.transpose(q, [2, 0, 1]), [vocab, batch, k]),
                                 [1, 2, 0])
            return tf.stack(proposals, 1), q, d_cache

        def verify(i, index, tok, proposals, q, t_cache):
            """One target pass over [tok, proposals] -> (n kept proposals, tokens [B, k + 1], cache)."""
            t_logits, t_cache = target.call_with_cache(tf.concat([tok[:, None], proposals], 1), t_cache,
                                                       index, pad, t_const)
            if greedy:
                accepted, new = greedy_rule(t_logits, proposals)
            else:
                q = tf.one_hot(proposals, tf.shape(t_logits)[-1]) if q is None else q  # lookup: a point mass
                u_accept = tf.stack([draws(1, i + j) for j in range(k)], 1)
                accepted, new = accept_rule(probs(t_logits), q, proposals, u_accept, draws(2, i))
            return tf.reduce_min(accepted), new, t_cache  # rows share the cache index: all keep the fewest

        def body(i, rounds, kept, steps, prev, tok, t_cache, d_cache, out):
            index = width + i - 1  # cache slot of ``tok``, the newest token (in neither cache yet)
            if draft is not None:
                proposals, q, d_cache = propose(i, index, prev, tok, d_cache)
                n, new, t_cache = verify(i, index, tok, proposals, q, t_cache)
                verified = tf.constant(1)
            else:
                proposals, found = lookup_proposals(tf.concat([tokens, out], 1), index, pad, k)

                def step():  # nothing to look up: one plain decode step (n = 0; tokens after it are overwritten)
                    logits, cache = target.decode(tok, index, pad, t_cache, t_const)
                    return tf.constant(0), tf.pad(pick(logits, i)[:, None], [[0, 0], [0, k]]), cache

                n, new, t_cache = tf.cond(tf.reduce_all(found), lambda: verify(i, index, tok, proposals, None, t_cache),
                                          step)
                verified = tf.cast(tf.reduce_all(found), tf.int32)
            out = dynamic_update_slice(out, new, [0, i])  # tokens after n are overwritten later
            seq = tf.concat([tok[:, None], new], 1)
            # gather, not seq[:, n]: a strided slice's begin is a compile-time constant for XLA, which
            # made the seed and temperature constants too (one XLA compilation per seed)
            last_two = tf.gather(seq, tf.stack([n, n + 1]), axis=1)
            return (i + n + 1, rounds + verified, kept + n, steps + 1 - verified, last_two[:, 0], last_two[:, 1],
                    t_cache, d_cache, out)

        init = (tf.constant(1), tf.constant(0), tf.constant(0), tf.constant(0), tokens[:, -1], first, t_cache,
                d_cache, out)
        _, rounds, kept, steps, *_, out = tf.while_loop(lambda i, *_: i < count, body, init,
                                                        maximum_iterations=buffer_len)
        return out, rounds, kept, steps

    return run


def _draft_vocab(draft_vocab, vocab_size, lookup):
    """``draft_vocab`` (None, int N or ids) -> sorted unique int32 ids, or None for the whole vocabulary."""
    if draft_vocab is None:
        return None
    if lookup:
        raise ValueError("draft_vocab restricts a draft model's head; prompt lookup has none")
    if isinstance(draft_vocab, bool):
        raise TypeError(f"draft_vocab must be None, an int or a list of token ids, got {draft_vocab!r}")
    if isinstance(draft_vocab, (int, np.integer)):
        if not 1 <= draft_vocab <= vocab_size:
            raise ValueError(f"draft_vocab must be in [1, {vocab_size}] (the vocabulary size), got {draft_vocab}")
        return None if draft_vocab == vocab_size else np.arange(draft_vocab, dtype=np.int32)
    ids = np.unique(np.asarray(draft_vocab))
    if ids.size == 0 or ids.dtype.kind not in "iu" or ids[0] < 0 or ids[-1] >= vocab_size:
        raise ValueError(f"draft_vocab ids must be a non-empty list of token ids in [0, {vocab_size})")
    return ids.astype(np.int32)


class SpeculativeDecoder(GenerationAPI):
    """``target`` (a ``LanguageModel``) generating with ``draft`` proposing ``k`` tokens per round:
    the whole generation API of ``kerasllm.models.language_model_text.GenerationAPI``. After each
    call ``stats`` holds rounds (verify passes), proposed, accepted, acceptance_rate, tokens_per_round
    and plain_steps (prompt lookup's rounds without proposals). ``draft`` is a ``LanguageModel`` or
    ``"prompt_lookup"``; ``draft_vocab`` (None, an int N: the first N ids, or a list of ids) the tokens
    the draft may propose (see the module docs)."""

    def __init__(self, target, draft, k=4, draft_vocab=None):
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= MAX_SPECULATIVE:
            raise ValueError(f"num_speculative (draft tokens per round) must be an int in [1, {MAX_SPECULATIVE}], "
                             f"got {k!r}")
        lookup = isinstance(draft, str) and draft == PROMPT_LOOKUP
        if isinstance(draft, str) and not lookup:
            raise ValueError(f"draft must be a LanguageModel or {PROMPT_LOOKUP!r}, got {draft!r}")
        for name, m in (("target", target),) + (() if lookup else (("draft", draft),)):
            if not hasattr(m, "model") or not hasattr(m, "window_context"):
                raise TypeError(f"{name} must be a LanguageModel, got {type(m).__name__}")
            if m.architecture != "transformer":
                raise ValueError(f"speculative decoding needs Transformer models (an LSTM state cannot take back "
                                 f"rejected tokens); the {name} is {m.architecture!r}")
        if not lookup:
            if draft.vocab_size != target.vocab_size:
                raise ValueError(f"draft and target must share the vocabulary: draft vocab_size "
                                 f"{draft.vocab_size}, target {target.vocab_size}")
            if draft.context_length < target.context_length:
                raise ValueError(f"the draft's context_length ({draft.context_length}) must be at least the "
                                 f"target's ({target.context_length})")
            tok_t, tok_d = target.tokenizer, draft.tokenizer
            if tok_t is not None and tok_d is not None and tok_t.get_config() != tok_d.get_config():
                raise ValueError("draft and target must use the same tokenizer (train the draft with "
                                 "train_language_model(..., teacher=target))")
        self.draft_vocab = _draft_vocab(draft_vocab, target.vocab_size, lookup)
        self.target, self.draft, self.k = target, draft, int(k)
        self.tokenizer, self.vocab_size, self.window_context = target.tokenizer, target.vocab_size, \
            target.window_context
        self._functions = {}
        self.stats = None

    @classmethod
    def of(cls, target, draft, k=4, draft_vocab=None):
        """The decoder for (target, draft, k, draft_vocab), kept on the target so its compiled functions
        are reused."""
        cache = target.__dict__.setdefault("_speculative", {})
        name = draft if isinstance(draft, str) else id(draft)
        vocab_key = draft_vocab if draft_vocab is None or isinstance(draft_vocab, (int, np.integer)) \
            else np.asarray(draft_vocab).tobytes()
        entry = cache.get((name, k, vocab_key))
        if entry is None or entry.draft is not draft and entry.draft != draft:
            entry = cache[(name, k, vocab_key)] = cls(target, draft, k, draft_vocab)
        return entry

    def __repr__(self):
        vocab = "" if self.draft_vocab is None else f", draft_vocab={len(self.draft_vocab)} tokens"
        return f"SpeculativeDecoder(target={self.target!r}, draft={self.draft!r}, k={self.k}{vocab})"

    def _function(self, batch, width, cache_len, buffer_len, key):
        sig = (batch, width, cache_len, buffer_len, key)
        if sig not in self._functions:
            from kerasllm._tf import tf

            draft = None if isinstance(self.draft, str) else self.draft.model
            run = speculative_function(self.target.model, draft, batch, cache_len, buffer_len, self.k, key,
                                       None if self.draft_vocab is None else tf.constant(self.draft_vocab))
            # autograph off: the loop is an explicit tf.while_loop, the rest plain Python over static values
            self._functions[sig] = tf.function(run, jit_compile=True, reduce_retracing=False, autograph=False)
        return self._functions[sig]

    def _chunks(self, tokens, pad, max_new_tokens, settings: SamplerSettings, seed, chunk=None):
        """Yield new tokens [B, n] a window segment at a time (``chunk`` is ignored: a segment is one
        compiled call). ``tokens`` [B, W] left-padded with ``pad`` [B]; ``seed`` int32."""
        history = np.asarray(tokens, np.int32)
        pad = np.asarray(pad, np.int32)
        batch, ctx, k = history.shape[0], self.window_context, self.k
        key = settings.sampler().key
        params = settings.params()
        params = (np.float32(max(params[0], 1e-6)),) + tuple(params[1:])
        stats = {"rounds": 0, "proposed": 0, "accepted": 0, "plain_steps": 0}
        step = 0
        for seg in segments(history.shape[1] - int(pad.min()), max_new_tokens, ctx):
            win, w_pad = window(history, pad, seg, PAD_MULTIPLE)
            width = win.shape[1]
            # slots written: the window, then up to index + k with index <= width + count - 2
            cache_len = round_up(width + seg.count - 1 + k, PAD_MULTIPLE)
            buffer_len = round_up(ctx + 1 + k, CHUNK)
            out, rounds, kept, steps = self._function(batch, width, cache_len, buffer_len, key)(
                win, w_pad, np.int32(seg.count), np.int32(step), np.int32(seed), *params)
            new = out.numpy()[:, :seg.count]
            history = np.concatenate([history, new], axis=1)
            step += seg.count
            stats["rounds"] += int(rounds)
            stats["proposed"] += int(rounds) * k
            stats["accepted"] += int(kept)
            stats["plain_steps"] += int(steps)  # prompt lookup: rounds with nothing to look up
            self.stats = self._summary(stats, step)
            yield new

    @staticmethod
    def _summary(stats, produced):
        rounds = stats["rounds"]
        return {**stats, "acceptance_rate": stats["accepted"] / stats["proposed"] if rounds else float("nan"),
                "tokens_per_round": (stats["accepted"] + rounds) / rounds if rounds else float("nan"),
                "new_tokens": produced}  # tokens_per_round: 1 to k + 1, the target's own token included
