"""Export a ``LanguageModel``: an XLA-compiled SavedModel and a TFLite file with prefill/decode signatures.

SavedModel signatures (TF Serving can call them):
- ``generate`` (character tokenizer only): string prompts + max_new_tokens, temperature, top_k,
  top_p, seed -> ``outputs`` strings (prompt + continuation). Tokenizing happens in the graph.
  One call generates at most up to the context length (long prompts keep their latest tokens).
- ``generate_tokens``: left-padded int32 tokens [B, P] + pad [B] + the same settings -> ``new_tokens``
  [B, N] of which the first ``count`` are valid (``kerasllm.load`` continues past the context).
- ``prefill`` / ``decode``: tokens (and positions) and cache in, logits and cache out.

TFLite (batch 1): ``prefill`` (tokens [1, P] -> logits [1, V] + cache) and ``decode``
(token [1], pos, cache -> logits + cache); the cache (Transformer keys/values, or LSTM h/c) is
explicit tensors ``cache_0 ... cache_{2L-1}``. The tokenizer and model config are attached to the
``.tflite`` (``kerasllm.export.tflite.attach``) so the file works on its own.
"""
from __future__ import annotations

from pathlib import Path

from kerasllm._tf import tf

SETTINGS_SPEC = dict(
    max_new_tokens=tf.TensorSpec([], tf.int32, name="max_new_tokens"),
    temperature=tf.TensorSpec([], tf.float32, name="temperature"),
    top_k=tf.TensorSpec([], tf.int32, name="top_k"),
    top_p=tf.TensorSpec([], tf.float32, name="top_p"),
    seed=tf.TensorSpec([], tf.int32, name="seed"),
)


def _flat(cache):
    return [t for pair in cache for t in pair]


def _nest(flat):
    return tuple((flat[i], flat[i + 1]) for i in range(0, len(flat), 2))


def _cache_length(lm):
    return lm.context_length if lm.architecture == "transformer" else 1


def first_window(history_len, max_new_tokens, context_length):
    """How many of the latest tokens to prefill: the rule of ``Decoder.chunks`` (None: all)."""
    if context_length is None:
        return None
    keep = max(1, context_length - min(max_new_tokens, context_length // 2))
    return keep if history_len > keep else None


def _generate_graph(lm, tokens, pad, max_new_tokens, temperature, top_k, top_p, seed):
    """New tokens [B, N] (the first ``count`` are valid) for left-padded prompts shorter than the
    context; ``count = min(max_new_tokens, context - prompt_len)`` (callers continue from the result)."""
    from kerasllm.generation.decode import _loop

    model = lm.model
    ctx = lm.context_length
    batch = tf.shape(tokens)[0]
    if lm.architecture == "transformer":
        tf.debugging.assert_less(tf.shape(tokens)[1], ctx, message="prompt must be shorter than the context")
        n = tf.minimum(max_new_tokens, ctx - tf.shape(tokens)[1])
        cache_len = ctx
    else:
        n = tf.minimum(max_new_tokens, ctx)
        cache_len = 1
    buffer = tf.zeros([batch, ctx], tf.int32)
    cache = model.init_cache(batch, cache_len)
    logits, cache = model.prefill(tokens, pad, cache)
    greedy = temperature <= 0.0
    key = ("sample", True, True)

    def sampler(logits, step, key_, t, k, p, s):
        from kerasllm.generation.samplers import next_token

        sampled = next_token(logits, step, key_, tf.maximum(t, 1e-6), tf.where(k > 0, k, tf.shape(logits)[-1]),
                             tf.where(p > 0, p, 1.0), s)
        return tf.where(greedy, tf.argmax(logits, -1, output_type=tf.int32), sampled)

    out, _, _ = _loop(model, logits, cache, tf.shape(tokens)[1], pad, n, 0, buffer, key, temperature, top_k, top_p,
                      seed, sampler=sampler)
    return out, n


class _Exportable(tf.Module):
    def __init__(self, lm):
        super().__init__()
        self.keras_model = lm.model
        self._lm = lm


def build_saved_model_module(lm):
    module = _Exportable(lm)
    model = lm.model
    cache_len = _cache_length(lm)
    n_cache = 2 * (lm.config.layers)
    signatures = {}

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"),
                                                    tf.TensorSpec([None], tf.int32, name="pad")]
                 + list(SETTINGS_SPEC.values()))
    def generate_tokens(tokens, pad, max_new_tokens, temperature, top_k, top_p, seed):
        out, n = _generate_graph(lm, tokens, pad, max_new_tokens, temperature, top_k, top_p, seed)
        return {"new_tokens": out, "count": n}

    signatures["generate_tokens"] = generate_tokens

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None, None], tf.int32, name="tokens"),
                                                    tf.TensorSpec([None], tf.int32, name="pad")])
    def prefill(tokens, pad):
        cache = model.init_cache(tf.shape(tokens)[0], cache_len)
        logits, cache = model.prefill(tokens, pad, cache)
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    signatures["prefill"] = prefill
    cache_specs = [tf.TensorSpec(t.shape, tf.float32, name=f"cache_{i}")
                   for i, t in enumerate(_flat(model.init_cache(1, cache_len)))]
    cache_specs = [tf.TensorSpec([None] + list(s.shape[1:]), tf.float32, name=s.name) for s in cache_specs]

    @tf.function(jit_compile=True, input_signature=[tf.TensorSpec([None], tf.int32, name="token"),
                                                    tf.TensorSpec([], tf.int32, name="pos"),
                                                    tf.TensorSpec([None], tf.int32, name="pad")] + cache_specs)
    def decode(token, pos, pad, *cache):
        logits, cache = model.decode(token, pos, pad, _nest(list(cache)), model.decode_constants())
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    signatures["decode"] = decode
    assert len(cache_specs) == n_cache

    tok = lm.tokenizer
    ctx = lm.context_length
    if tok is not None and tok.kind == "char":
        chars = tok.chars
        codepoints = tf.constant([ord(c) for c in chars], tf.int32)
        module.char_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(codepoints, tf.range(1, len(chars) + 1, dtype=tf.int32)), 0)
        module.id_to_codepoint = tf.Variable(
            tf.constant([ord(tok.unknown)] + [ord(c) for c in chars], tf.int32), trainable=False)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="prompts")] + list(SETTINGS_SPEC.values()))
        def generate(prompts, max_new_tokens, temperature, top_k, top_p, seed):
            cps = tf.strings.unicode_decode(prompts, "UTF-8", errors="replace")
            ids = tf.ragged.map_flat_values(module.char_table.lookup, cps)
            lengths = tf.cast(ids.row_lengths(), tf.int32)
            newline = module.char_table.lookup(tf.constant([ord("\n")]))
            # an empty prompt starts from a line break (there is no start token)
            lengths_safe = tf.maximum(lengths, 1)
            width = tf.reduce_max(lengths_safe)
            dense = ids.to_tensor(shape=[tf.shape(prompts)[0], width])
            dense = tf.where(lengths[:, None] > 0, dense, tf.broadcast_to(newline, tf.shape(dense)))
            pad = width - lengths_safe
            j = tf.range(width)[None, :] - pad[:, None]  # left-pad: row b's token j sits at j + pad[b]
            left = tf.where(j >= 0, tf.gather(dense, tf.maximum(j, 0), batch_dims=1), 0)
            if lm.architecture == "transformer":  # keep the latest tokens, room to generate (Decoder's rule)
                keep = tf.maximum(1, ctx - tf.minimum(max_new_tokens, ctx // 2))
                cut = tf.maximum(width - keep, 0)
                left, pad = left[:, cut:], tf.maximum(pad - cut, 0)
            out = generate_tokens(left, pad, max_new_tokens, temperature, top_k, top_p, seed)
            new = out["new_tokens"][:, :out["count"]]
            text = tf.strings.unicode_encode(tf.gather(module.id_to_codepoint, new), "UTF-8")
            return {"outputs": tf.strings.join([prompts, text])}

        signatures["generate"] = generate
    module.signature_functions = signatures
    return module, signatures


def build_tflite_functions(lm):
    """Concrete functions for TFLite: batch 1, cache at the full context length."""
    model = lm.model
    cache_len = _cache_length(lm)
    example = _flat(model.init_cache(1, cache_len))
    cache_specs = [tf.TensorSpec(t.shape, tf.float32, name=f"cache_{i}") for i, t in enumerate(example)]

    @tf.function(input_signature=[tf.TensorSpec([1, None], tf.int32, name="tokens")])
    def prefill(tokens):
        cache = model.init_cache(1, cache_len)
        logits, cache = model.prefill(tokens, tf.zeros([1], tf.int32), cache)
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    @tf.function(input_signature=[tf.TensorSpec([1], tf.int32, name="token"), tf.TensorSpec([], tf.int32, name="pos")]
                 + cache_specs)
    def decode(token, pos, *cache):
        logits, cache = model.decode(token, pos, tf.zeros([1], tf.int32), _nest(list(cache)),
                                     model.decode_constants())
        return {"logits": logits, **{f"cache_{i}": t for i, t in enumerate(_flat(cache))}}

    return [prefill.get_concrete_function(), decode.get_concrete_function()]


def runtime_config(lm):
    return {"kind": lm.kind, "architecture": lm.architecture, "model": lm.config.to_dict(),
            "tokenizer": lm.tokenizer.get_config() if lm.tokenizer is not None else None,
            "cache_length": _cache_length(lm), "cache_tensors": 2 * lm.config.layers}


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
        extra["tflite_signatures"] = ["prefill", "decode"]
        extra["quantization"] = quantization
    return extra
