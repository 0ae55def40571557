"""The explicit prefill/decode seam: cached logits equal a full forward pass at every prompt length,
alone and left-padded in one batch, for the Transformer (learned and rotary positions) and the LSTM."""
import numpy as np
import pytest

CTX, STEPS = 12, 3


def _model(kind):
    from kerasllm.models.language_model import build_model

    if kind == "lstm":
        return build_model("lstm", dict(vocab_size=29, hidden=16, layers=2, context_length=CTX), seed=1)
    return build_model("transformer", dict(vocab_size=29, hidden=16, layers=2, heads=2, ff=32, context_length=CTX,
                                           positions=kind), seed=1)


def _functions(model):
    from kerasllm._tf import tf

    prefill = tf.function(lambda t, pad, length: model.prefill(t, pad, model.init_cache(tf.shape(t)[0], length)),
                          reduce_retracing=True)
    decode = tf.function(lambda t, i, pad, cache: model.decode(t, i, pad, cache), reduce_retracing=True)
    return prefill, decode


@pytest.mark.parametrize("kind", ["learned", "rotary", "lstm"])
def test_cached_decode_equals_full_forward_at_every_prompt_length(kind):
    model = _model(kind)
    prefill, decode = _functions(model)
    seq = np.random.default_rng(0).integers(0, 29, CTX).astype(np.int32)
    full = model(seq[None]).numpy()[0]  # [CTX, V]: logits after each prefix
    for length in range(1, CTX + 1):  # alone: prefill `length` tokens, then decode up to STEPS more
        logits, cache = prefill(seq[None, :length], np.zeros(1, np.int32), np.int32(CTX))
        np.testing.assert_allclose(logits.numpy()[0], full[length - 1], atol=1e-4, err_msg=f"prefill {length}")
        for t in range(length, min(length + STEPS, CTX)):
            logits, cache = decode(seq[t:t + 1], np.int32(t), np.zeros(1, np.int32), cache)
            np.testing.assert_allclose(logits.numpy()[0], full[t], atol=1e-4, err_msg=f"prompt {length} step {t}")

    # batched: every prompt length in one left-padded batch (prefill), then rows that have room decode
    for lengths in (range(1, CTX + 1), range(1, CTX - STEPS + 1)):
        lengths = np.array(list(lengths))
        width = lengths.max()
        tokens = np.zeros((len(lengths), width), np.int32)
        for r, n in enumerate(lengths):
            tokens[r, width - n:] = seq[:n]
        pad = (width - lengths).astype(np.int32)
        logits, cache = prefill(tokens, pad, np.int32(width + STEPS))
        np.testing.assert_allclose(logits.numpy(), full[lengths - 1], atol=1e-4)
        if width == CTX:
            continue
        for i in range(STEPS):
            logits, cache = decode(seq[lengths + i], np.int32(width + i), pad, cache)
            np.testing.assert_allclose(logits.numpy(), full[lengths + i], atol=1e-4, err_msg=f"batched step {i}")


@pytest.mark.parametrize("kind", ["learned", "rotary"])
def test_call_with_cache_takes_several_tokens_after_a_prefix(kind):
    """A multi-token call at a nonzero index (speculative verification, chunked prefill) matches too."""
    from kerasllm._tf import tf

    model = _model(kind)
    seq = np.random.default_rng(1).integers(0, 29, (2, CTX)).astype(np.int32)
    full = model(seq).numpy()
    cache = model.init_cache(2, CTX)
    first, cache = model.call_with_cache(tf.constant(seq[:, :5]), cache, 0)
    rest, cache = model.call_with_cache(tf.constant(seq[:, 5:]), cache, 5)
    np.testing.assert_allclose(np.concatenate([first.numpy(), rest.numpy()], 1), full, atol=1e-4)
