"""Export a ``LanguageModel``: an XLA-compiled SavedModel and a TFLite file with prefill/decode signatures.

SavedModel signatures (TF Serving can call them):
- ``generate_tokens``: left-padded int32 ``tokens`` [B, P] + ``pad`` [B] + ``max_new_tokens``,
  ``temperature`` (0: greedy), ``top_k`` (0: off), ``top_p`` (1 or 0: off), ``seed`` (< 0: a fresh
  seed) -> ``new_tokens`` [B, max_new_tokens]. The whole window plan of
  ``kerasllm.generation.window`` runs in the graph (crop, segments, cache rebuilds), each segment
  one XLA call, so the result equals ``LanguageModel.generate_tokens`` with the same seed.
- ``generate`` (character tokenizer only): string ``prompts`` + the same settings -> ``outputs``
  (prompt + continuation, cut at end-of-text). Tokenizing happens in the graph.
- ``prefill`` (tokens, pad) / ``decode`` (token, pos, pad, cache_i): logits and cache out.
Argument checks (empty prompt, bad settings, pads) run outside XLA, so they raise clear
InvalidArgumentErrors (XLA drops ``tf.debugging`` asserts).

TFLite (see ``build_tflite_functions``): Transformer ``start_{B}`` (prefill) and ``step{T}_{B}`` (one
decode step over a cache kept in the interpreter), LSTM ``generate_{B}``/``resume_{B}`` (chunks
of the sampler's loop), B in 1 and 8; and one-row ``prefill`` (tokens [1, P],
pad [1] -> logits [1, V] + cache) / ``decode`` (token [1], pos, pad [1], cache -> logits + cache)
with the cache as explicit tensors ``cache_0 ... cache_{2L-1}``. The tokenizer and model config are
attached to the ``.tflite`` (``kerasllm.export.tflite.attach``).
"""
from __future__ import annotations

from pathlib import Path

from kerasllm._tf import tf
from kerasllm.generation.samplers import AnySampler
from kerasllm.generation.window import (MAX_NEW_TOKENS, PAD_MULTIPLE, bucket_extra, first_start, next_start,
                                        round_up, segment_count, window_columns)

SETTINGS_SPEC = dict(
    max_new_tokens=tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    temperature=tf.TensorSpec([], tf.float32, name="temperature"),
    top_k=tf.TensorSpec([], tf.int32, name="top_k"),
    top_p=tf.TensorSpec([], tf.float32, name="top_p"),
    seed=tf.TensorSpec([], tf.int32, name="seed"),
)
LSTM_CHUNK = 256  # new tokens per XLA call for the LSTM (no window: the state is carried between calls)


def _flat(cache):
    return [t for pair in cache for t in pair]


def _nest(flat):
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def _cache_length(lm):
    return lm.context_length if lm.architecture == "transformer" else 1


class _Exportable(tf.Module):
    def __init__(self, lm):
        super().__init__()
        self.keras_model = lm.model
        self._lm = lm


def _check_settings(tokens, pad, max_new_tokens, temperature, top_k, top_p):
    """Graph-mode checks, outside XLA (so they are kept and raise InvalidArgumentError)."""
    width = tf.shape(tokens)[1]
    return [
        tf.debugging.assert_positive(width, message="tokens must have at least one column (an empty prompt "
                                                    "has no start token)"),
        tf.debugging.assert_equal(tf.shape(pad)[0], tf.shape(tokens)[0], message="pad needs one entry per row"),
        tf.debugging.assert_less(pad, width, message="every row needs at least one real token (pad < width)"),
        tf.debugging.assert_non_negative(pad, message="pad must be >= 0"),
        tf.debugging.assert_less_equal(max_new_tokens, MAX_NEW_TOKENS,
                                       message=f"max_new_tokens must be <= {MAX_NEW_TOKENS}"),
        tf.debugging.assert_non_negative(max_new_tokens, message="max_new_tokens must be >= 0"),
        tf.debugging.assert_equal(tf.math.is_finite(temperature) & (temperature >= 0.0), True,
                                  message="temperature must be a finite number >= 0 (0 is greedy)"),
        tf.debugging.assert_non_negative(top_k, message="top_k must be >= 0 (0: off)"),
        tf.debugging.assert_equal(tf.math.is_finite(top_p) & (top_p >= 0.0) & (top_p <= 1.0), True,
                                  message="top_p must be in (0, 1] (0: off)"),
    ]


class _Generator:
    """The SavedModel's generation graph: the window plan in a graph loop, each segment (or LSTM
    chunk) one XLA function running ``AnySampler``'s compiled loop."""

    def __init__(self, lm):
        self.model, self.ctx = lm.model, lm.window_context
        self.sampler = AnySampler()
        model, sampler, ctx = self.model, self.sampler, self.ctx
        buffer_len = ctx + 1 if ctx is not None else LSTM_CHUNK

        @tf.function(jit_compile=True)
        def start(tokens, pad, count, step0, seed, t, k, p):
            # windows are padded to a multiple of PAD_MULTIPLE (fewer XLA compilations), hence the longer cache
            cache = model.init_cache(tf.shape(tokens)[0], ctx + PAD_MULTIPLE - 1 if ctx is not None else 1)
            buffer = tf.zeros([tf.shape(tokens)[0], buffer_len], tf.int32)
            return sampler.start(model, tokens, pad, cache, count, step0, seed, (t, k, p), buffer)

        @tf.function(jit_compile=True)
        def resume(token, cache, index, pad, count, step0, seed, t, k, p):
            buffer = tf.zeros([tf.shape(token)[0], buffer_len], tf.int32)
            return sampler.resume(model, token, cache, index, pad, count, step0, seed, (t, k, p), buffer)

        self.start, self.resume = start, resume

    def __call__(self, tokens, pad, n, t, k, p, seed):
        """-> new tokens [B, n] (int32)."""
        batch, width = tf.shape(tokens)[0], tf.shape(tokens)[1]
        seed = tf.where(seed < 0, tf.random.uniform([], 0, 2 ** 31 - 1, tf.int32), seed)
        t, p = tf.maximum(t, 0.0), tf.where(p <= 0.0, 1.0, p)
        longest = width - tf.reduce_min(pad)
        new = tf.zeros([batch, 0], tf.int32)
        if self.ctx is not None:
            def body(produced, start, end, new):
                count = segment_count(start, end, n - produced, self.ctx, tf.minimum)
                first, stop, w_pad = window_columns(pad, start, end, tf.reduce_min, tf.maximum)
                extra = bucket_extra(stop - first, PAD_MULTIPLE)
                win = tf.concat([tf.zeros([batch, extra], tf.int32), tf.concat([tokens, new], 1)[:, first:stop]], 1)
                out, _, _ = self.start(win, w_pad + extra, count, produced, seed, t, k, p)
                end = end + count
                return produced + count, next_start(end, self.ctx), end, tf.concat([new, out[:, :count]], 1)

            init = (tf.constant(0), first_start(longest, self.ctx, tf.maximum), longest, new)
            new = tf.while_loop(lambda produced, *_: produced < n, body, init,
                                shape_invariants=(tf.TensorShape([]),) * 3 + (tf.TensorShape([None, None]),))[3]
            return new
        # LSTM: no window; prefill once, then carry the state from chunk to chunk
        cache = self.model.init_cache(batch, 1)

        def lstm_body(produced, token, cache, new):
            count = tf.minimum(n - produced, LSTM_CHUNK)
            out, cache, token = tf.cond(
                produced == 0,
                lambda: self.start(tokens, pad, count, produced, seed, t, k, p),
                lambda: self.resume(token, cache, width + produced - 1, pad, count, produced, seed, t, k, p))
            return produced + count, token, cache, tf.concat([new, out[:, :count]], 1)

        init = (tf.constant(0), tf.zeros([batch], tf.int32), cache, new)
        invariants = (tf.TensorShape([]), tf.TensorShape([None]), tf.nest.map_structure(lambda c: c.shape, cache),
                      tf.TensorShape([None, None]))
        return tf.while_loop(lambda produced, *_: produced < n, lstm_body, init, shape_invariants=invariants)[3]


def build_saved_model_module(lm):
    module = _Exportable(lm)
    model = lm.model
    cache_len = _cache_length(lm)
    generator = _Generator(lm)
    signatures = {}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"),
                                  tf.TensorSpec([None], tf.int32, name="pad")] + list(SETTINGS_SPEC.values()))
    def generate_tokens(tokens, pad, max_new_tokens, temperature, top_k, top_p, seed):
        with tf.control_dependencies(_check_settings(tokens, pad, max_new_tokens, temperature, top_k, top_p)):
            return {"new_tokens": generator(tokens, pad, max_new_tokens, temperature, top_k, top_p, seed)}

    signatures["generate_tokens"] = generate_tokens

    @tf.function(jit_compile=True)
    def prefill_xla(tokens, pad):
        cache = model.init_cache(tf.shape(tokens)[0], cache_len)
        logits, cache = model.prefill(tokens, pad, cache)
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"),
                                  tf.TensorSpec([None], tf.int32, name="pad")])
    def prefill(tokens, pad):
        checks = [tf.debugging.assert_less_equal(tf.shape(tokens)[1], cache_len if lm.window_context else 2 ** 30,
                                                 message=f"prefill takes at most {cache_len} tokens (the context)"),
                  tf.debugging.assert_positive(tf.shape(tokens)[1], message="prefill needs at least one token")]
        with tf.control_dependencies(checks):
            return prefill_xla(tf.identity(tokens), pad)

    signatures["prefill"] = prefill
    cache_specs = [tf.TensorSpec([None] + list(t.shape[1:]), tf.float32, name=f"cache_{i}")
                   for i, t in enumerate(_flat(model.init_cache(1, cache_len)))]

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None], tf.int32, name="token"),
                                                    tf.TensorSpec([], tf.int32, name="pos"),
                                                    tf.TensorSpec([None], tf.int32, name="pad")] + cache_specs)
    def decode(token, pos, pad, *cache):
        logits, cache = model.decode(token, pos, pad, _nest(list(cache)), model.decode_constants())
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    signatures["decode"] = decode

    tok = lm.tokenizer
    if tok is not None and tok.kind == "char":
        first = tok.first_char_id
        module.char_table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([ord(c) for c in tok.chars], tf.int32), tf.range(first, first + len(tok.chars))),
            tok.unknown_id)
        # id -> code point; ids below the unknown id (padding/end-of-text) never reach it (cut below)
        module.id_to_codepoint = tf.Variable(tf.constant(
            [ord(tok.unknown)] * (tok.unknown_id + 1) + [ord(c) for c in tok.chars], tf.int32), trainable=False)
        eot = tok.end_of_text_id

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompts")] + list(SETTINGS_SPEC.values()))
        def generate(prompts, max_new_tokens, temperature, top_k, top_p, seed):
            ids = tf.ragged.map_flat_values(module.char_table.lookup,
                                            tf.strings.unicode_decode(prompts, "UTF-8", errors="replace"))
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            check = tf.debugging.assert_positive(lengths, message="prompts must not be empty (no start token)")
            with tf.control_dependencies([check]):
                width = tf.reduce_max(lengths)
            pad = width - lengths
            dense = ids.to_tensor(shape=[tf.shape(prompts)[0], width])
            j = tf.range(width)[None, :] - pad[:, None]  # left-pad: row b's token j sits at j + pad[b]
            left = tf.where(j >= 0, tf.gather(dense, tf.maximum(j, 0), batch_dims=1), 0)
            new = generate_tokens(left, pad, max_new_tokens, temperature, top_k, top_p, seed)["new_tokens"]
            keep = tf.fill([tf.shape(new)[0]], tf.shape(new)[1])
            if eot is not None:  # cut before the first end-of-text
                hit = tf.equal(new, eot)
                keep = tf.where(tf.reduce_any(hit, 1), tf.argmax(tf.cast(hit, tf.int32), 1, output_type=tf.int32),
                                keep)
            new = tf.RaggedTensor.from_tensor(new, lengths=keep)
            text = tf.strings.unicode_encode(tf.gather(module.id_to_codepoint, new), "UTF-8")
            return {"outputs": tf.strings.join([prompts, text])}

        signatures["generate"] = generate
    module.signature_functions = signatures
    return module, signatures


TFLITE_BATCHES = (1, 8)  # generate signatures: a batch runs as groups of 8 rows, the last padded up to 1 or 8


def _generate_specs(batch):
    return [tf.TensorSpec([batch], tf.int32, name="pad"),
            tf.TensorSpec([], tf.int32, name="count"), tf.TensorSpec([], tf.int32, name="step0"),
            tf.TensorSpec([], tf.int32, name="seed"), tf.TensorSpec([], tf.float32, name="temperature"),
            tf.TensorSpec([], tf.int32, name="top_k"), tf.TensorSpec([], tf.float32, name="top_p"),
            tf.TensorSpec([], tf.int32, name="first_row")]


def build_tflite_functions(lm):
    """Concrete functions for TFLite.

    Transformer, B in ``TFLITE_BATCHES`` (the runtime: ``TFLiteLanguageModel._segment_steps``):
    ``start_{B}``: tokens [B, W], pad [B], cache_slots [T] (only its length T matters) -> logits
    [B, V] of the last position and the cache ``cache_i`` (keys transposed [B * heads, head_dim, T],
    values [B * heads, T, head_dim]). ``step{T}_{B}`` (T in ``step_lengths``, static shapes): token
    [B], index (its cache slot), pad, cache_i -> logits [B, V] and ``entries`` [2 * layers,
    B * heads, head_dim], the step's new keys/values. The step only reads the cache, so the runtime
    keeps it in the signature's input tensors and writes the entries in. No WHILE op: measured
    (benchmarks/tflite_profile.py), a TFLite WHILE body runs without XNNPACK and copies its loop
    variables, the cache included, every iteration; and the tokens are picked outside the graph by
    the sampler's NumPy ops (the same rule), so greedy decoding sorts nothing.

    LSTM (no window): ``generate_{B}`` runs ``AnySampler``'s loop (a TFLite WHILE op) for
    ``LSTM_CHUNK`` tokens per invoke and returns its state (``cache_i``) and last token; ``resume_{B}``
    goes on from them (its state is small).

    ``prefill``/``decode`` (one row, the cache at the full context length, as explicit tensors):
    single steps, for callers that score tokens one at a time (LM compression)."""
    model = lm.model
    cache_len = _cache_length(lm)
    lstm = lm.window_context is None
    buffer_len = LSTM_CHUNK if lstm else lm.window_context + 1
    cache_specs = [tf.TensorSpec(t.shape, tf.float32, name=f"cache_{i}")
                   for i, t in enumerate(_flat(model.init_cache(1, cache_len)))]

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32, name="tokens"),
                                  tf.TensorSpec([1], tf.int32, name="pad")])
    def prefill(tokens, pad):
        cache = model.init_cache(1, cache_len)
        logits, cache = model.prefill(tokens, pad, cache)
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.int32, name="token"), tf.TensorSpec([], tf.int32, name="pos"),
                                  tf.TensorSpec([1], tf.int32, name="pad")] + cache_specs)
    def decode(token, pos, pad, *cache):
        logits, cache = model.decode(token, pos, pad, _nest(list(cache)), model.decode_constants())
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    functions = [prefill.get_concrete_function(), decode.get_concrete_function()]
    for batch in TFLITE_BATCHES:
        functions += _tflite_generate(model, batch, lstm, buffer_len, lm.window_context)
    return functions


def step_lengths(context):
    """Cache lengths of the TFLite ``step{T}_{B}`` signatures: eighths of the context, rounded up
    to ``PAD_MULTIPLE`` (a static length per signature: TFLite runs shapes unknown at conversion
    much slower). The runtime moves the cache to the next length as it fills (``step_length``), so a
    step attends over at most an eighth of the context more than the filled slots: at batch 8 the
    attention over the cache was most of a step's time (README, TFLite decode)."""
    return sorted({round_up(max(1, q * context // 8), PAD_MULTIPLE) for q in range(1, 9)})


def step_length(lengths, slot):
    """The ``step{T}`` signature that decodes the token at cache slot ``slot``: the shortest cache
    with room for slots ``0 .. slot`` (the step reads the slots below ``slot``; its own keys and
    values are written at ``slot`` after it)."""
    return min(n for n in lengths if n > slot)


def _step_layout(flat):
    """The cache as ``step_*`` takes it: keys transposed [B * heads, head_dim, T] (the scores are one
    multiply and a sum over head_dim, axis 1), values [B * heads, T, head_dim]."""
    return [tf.transpose(t, [0, 2, 1]) if i % 2 == 0 else t for i, t in enumerate(flat)]


def _tflite_generate(model, batch, lstm, buffer_len, context=None):
    """The ``generate_{batch}`` (and LSTM ``resume_{batch}``) concrete functions."""
    sampler = AnySampler()

    def outputs(out, cache, last):
        result = {"new_tokens": out}
        if lstm:  # the state goes on to the next chunk
            result.update(last=last, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))})
        return result

    def signature(fn, name, specs):
        fn.__name__ = f"{name}_{batch}"  # the signature key
        return tf.function(fn, input_signature=specs).get_concrete_function()

    tokens = tf.TensorSpec([batch, None], tf.int32, name="tokens")
    if not lstm:
        def start(tokens, pad, cache_slots):
            logits, cache = model.prefill(tokens, pad, model.init_cache(batch, tf.shape(cache_slots)[0]))
            return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_step_layout(_flat(cache)))}}

        def step(token, index, pad, *cache):
            logits, recent = model.decode_after_prefix(token, index, pad, _nest(list(cache)), model.decode_constants())
            # a concatenation, not tf.stack: XNNPACK takes CONCATENATION, not PACK
            return {"logits": logits, "entries": tf.concat([t[None] for t in _flat(recent)], 0)}

        pad = tf.TensorSpec([batch], tf.int32, name="pad")
        functions = [signature(start, "start", [tokens, pad, tf.TensorSpec([None], tf.int32, name="cache_slots")])]
        for length in step_lengths(context):
            cache = [tf.TensorSpec([batch * t.shape[0]] + ([t.shape[2], length] if i % 2 == 0 else [length, t.shape[2]]),
                                   tf.float32, name=f"cache_{i}") for i, t in enumerate(_flat(model.init_cache(1, 1)))]
            functions.append(signature(step, f"step{length}", [tf.TensorSpec([batch], tf.int32, name="token"),
                                                               tf.TensorSpec([], tf.int32, name="index"), pad]
                                       + cache))
        return functions

    def generate_lstm(tokens, pad, count, step0, seed, temperature, top_k, top_p, first_row):
        return outputs(*sampler.start(model, tokens, pad, model.init_cache(batch, 1), count, step0, seed,
                                      (temperature, top_k, top_p), tf.zeros([batch, buffer_len], tf.int32),
                                      first_row))

    def resume(token, index, pad, count, step0, seed, temperature, top_k, top_p, first_row, *cache):
        return outputs(*sampler.resume(model, token, _nest(list(cache)), index, pad, count, step0, seed,
                                       (temperature, top_k, top_p), tf.zeros([batch, buffer_len], tf.int32),
                                       first_row))

    state = [tf.TensorSpec([batch] + list(t.shape[1:]), tf.float32, name=f"cache_{i}")
             for i, t in enumerate(_flat(model.init_cache(1, 1)))]
    return [signature(generate_lstm, "generate", [tokens] + _generate_specs(batch)),
            signature(resume, "resume", [tf.TensorSpec([batch], tf.int32, name="token"),
                                         tf.TensorSpec([], tf.int32, name="index")]
                      + _generate_specs(batch) + state)]


def runtime_config(lm):
    return {"kind": lm.kind, "architecture": lm.architecture, "model": lm.config.to_dict(),
            "tokenizer": lm.tokenizer.get_config() if lm.tokenizer is not None else None,
            "cache_length": _cache_length(lm), "cache_tensors": 2 * lm.config.layers,
            "generate_batches": list(TFLITE_BATCHES),
            "generate_chunk": LSTM_CHUNK if lm.window_context is None else lm.window_context + 1,
            "step_lengths": None if lm.window_context is None else step_lengths(lm.window_context)}


def export_language_model(lm, directory, formats, quantization=None):
    from kerasllm.export import TFLITE_FILE
    from kerasllm.export.tflite import attach, convert

    directory = Path(directory)
    extra = {"architecture": lm.architecture, "model": lm.config.to_dict(),
             "tokenizer": lm.tokenizer.get_config() if lm.tokenizer is not None else None}
    if "saved_model" in formats:
        module, signatures = build_saved_model_module(lm)
        tf.saved_model.save(module, str(directory), signatures=signatures)
        extra["saved_model_signatures"] = sorted(signatures)
    if "tflite" in formats:
        functions = build_tflite_functions(lm)
        flat = convert(functions, lm.model, quantization=quantization)
        (directory / TFLITE_FILE).write_bytes(attach(flat, runtime_config(lm)))
        extra["tflite"] = TFLITE_FILE
        extra["tflite_signatures"] = ["prefill", "decode"] + [
            f"{kind}_{b}" for b in TFLITE_BATCHES for kind in (("generate", "resume") if lm.window_context is None
                                                               else ["start"] + [
        f"step{n}" for n in step_lengths(lm.window_context)])]
        extra["quantization"] = quantization
    return extra
