"""Speculative decoding: greedy output equals the target's own, the acceptance rule samples the
target's distribution (chi-square), and bad pairings or arguments get clear errors."""
import numpy as np
import pytest

ALPHA = 1e-3  # chi-square tests: a correct rule fails one of them about once in a thousand runs


@pytest.fixture(scope="module")
def draft_lm(tiny_lm, lm_text):
    """A 1-layer draft distilled from the session's tiny Transformer for a few steps: it agrees with
    the target often but not always, so rounds both accept and reject."""
    import tasks

    return tasks.train_language_model(lm_text, teacher=tiny_lm, steps=40, seed=1, hidden=32, layers=1, heads=2,
                                      ff=64, batch_size=16, learning_rate=1e-2, warmup_steps=5, verbose=0)


def _decoder(target, draft):
    from kerasllm.generation.speculative import decoder_for

    return decoder_for(target, draft)


def _greedy():
    from kerasllm.generation.samplers import SamplerSettings

    return SamplerSettings()


@pytest.fixture(scope="module")
def random_draft(tiny_lm):
    """An untrained draft: mostly rejected, so rounds end early and stale cache slots get rewritten."""
    import kerasllm

    return kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size, hidden=16, layers=1,
                                               heads=2, context_length=tiny_lm.context_length, seed=3)


def test_greedy_equals_target_greedy_to_the_end_of_the_window(tiny_lm, draft_lm, random_draft, lm_text):
    ids = tiny_lm.tokenizer.encode(lm_text[5000:5001])[None]  # a one-token prompt ...
    n = tiny_lm.context_length  # ... generating until the window is full (the last token sees context_length)
    expected = tiny_lm.generate_tokens(ids, max_new_tokens=n)
    rates = {}
    for name, draft, k in (("distilled", draft_lm, 4), ("untrained", random_draft, 3)):
        out, stats = _decoder(tiny_lm, draft).generate(ids, np.zeros(1, np.int32), n, _greedy(), num_speculative=k)
        np.testing.assert_array_equal(out, expected[:, 1:], err_msg=f"{name} draft, k={k}")
        rates[name] = stats["acceptance_rate"]
    # both paths ran: rounds where everything was accepted and rounds cut short by a rejection
    assert rates["distilled"] > 0.5 and rates["untrained"] < 0.5, rates
    np.testing.assert_array_equal(tiny_lm.generate_tokens(ids, max_new_tokens=n, draft=draft_lm), expected)


def test_greedy_batch_of_prompts_of_different_lengths_through_generate(tiny_lm, draft_lm, random_draft, lm_text):
    prompts = [lm_text[200:201], lm_text[300:309], lm_text[400:425]]  # left-padded rows sharing one cache index
    expected = tiny_lm.generate(prompts, max_new_tokens=30)
    assert tiny_lm.generate(prompts, max_new_tokens=30, draft=draft_lm, num_speculative=3) == expected
    assert tiny_lm.generate(prompts, max_new_tokens=30, draft=random_draft, num_speculative=2) == expected


def test_greedy_with_the_target_as_its_own_draft_accepts_everything(tiny_lm, lm_text):
    ids = tiny_lm.tokenizer.encode(lm_text[:30])[None]
    out, stats = _decoder(tiny_lm, tiny_lm).generate(ids, np.zeros(1, np.int32), 25, _greedy(), num_speculative=4)
    np.testing.assert_array_equal(out, tiny_lm.generate_tokens(ids, max_new_tokens=25)[:, ids.shape[1]:])
    assert stats["acceptance_rate"] == 1.0 and stats["rounds"] == 5  # 1 token from the prefill, then 5 rounds of 4 + 1


def _rule_draws(p, q, rows, seed, truncate=True):
    """Run ``accept_rule`` on ``rows`` independent rows with fixed p [k+1, V], q [k, V]; return, per
    position j, the tokens of the rows that emit position j. A row emits positions 0..n with
    n = min(accepted, m) and m drawn independently (what the other rows of a batch do to it)."""
    from kerasllm._tf import tf
    from kerasllm.generation.speculative import accept_rule

    rng = np.random.default_rng(seed)
    k, vocab = q.shape
    proposals = np.stack([rng.choice(vocab, size=rows, p=q[j]) for j in range(k)], 1).astype(np.int32)
    accepted, tokens = accept_rule(tf.constant(np.broadcast_to(p, (rows,) + p.shape), tf.float32),
                                   tf.constant(np.broadcast_to(q, (rows,) + q.shape), tf.float32),
                                   tf.constant(proposals), tf.constant(rng.random((rows, k)), tf.float32),
                                   tf.constant(rng.random((rows, k + 1)), tf.float32))
    accepted, tokens = accepted.numpy(), tokens.numpy()
    n = np.minimum(accepted, rng.integers(0, k + 1, rows)) if truncate else accepted
    return [tokens[n >= j, j] for j in range(k + 1)], accepted


def _chi2_pvalue(samples, probs):
    """Chi-square goodness of fit of int samples to probs; tokens expected fewer than 5 times are pooled
    into one bin, and a token of probability 0 must never appear."""
    from scipy.stats import chisquare

    probs = np.asarray(probs, np.float64) / np.sum(probs)
    counts = np.bincount(samples, minlength=len(probs))
    assert not np.any(counts[probs == 0]), "a token of probability 0 was drawn"
    common = probs * len(samples) >= 5
    observed = np.append(counts[common], counts[~common].sum())
    expected = np.append(probs[common], probs[~common].sum()) * len(samples)
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    return chisquare(observed, expected).pvalue


def test_acceptance_rule_samples_the_target_distribution():
    rng = np.random.default_rng(0)
    k, vocab = 3, 6
    p = rng.dirichlet(np.ones(vocab), size=k + 1)
    q = rng.dirichlet(np.ones(vocab), size=k)
    q[0, 2] = 0.0  # a token the draft never proposes: only the correction can produce it
    q[0] /= q[0].sum()
    p[1, 4] = 0.0  # a token the target never wants (the draft does): it must never come out at position 1
    p[1] /= p[1].sum()
    q[1:] = 0.6 * p[1:k] + 0.4 * q[1:]  # later drafts closer to the target, so later positions are reached
    for truncate in (False, True):
        emitted, accepted = _rule_draws(p, q, 40_000, seed=1, truncate=truncate)
        for j in range(k + 1):
            assert len(emitted[j]) > 1_000
            assert _chi2_pvalue(emitted[j], p[j]) > ALPHA, f"position {j} (truncate={truncate})"
    # the acceptance rate is the overlap sum(min(p, q)) at the first position
    assert abs(np.mean(accepted > 0) - np.minimum(p[0], q[0]).sum()) < 0.01
    # the test has power: the draft's own proposals are far from the target's distribution
    proposals = np.random.default_rng(2).choice(vocab, size=40_000, p=q[0])
    assert _chi2_pvalue(proposals, p[0]) < 1e-12


def test_sampled_speculative_follows_the_target_through_the_loop(tiny_lm, draft_lm, lm_text):
    """Many rows of one prompt, sampled at temperature 1: the second new token (the first the
    acceptance rule chooses, after a round of draft proposals and cache updates) is distributed as
    the target's sum over t1 of p(t1 | prompt) p(t2 | prompt, t1)."""
    from kerasllm._tf import tf
    from kerasllm.generation.samplers import SamplerSettings

    prompt = tiny_lm.tokenizer.encode(lm_text[3000:3010])
    rows = 3000
    tokens = np.broadcast_to(prompt, (rows, len(prompt))).astype(np.int32)
    out, stats = _decoder(tiny_lm, draft_lm).generate(tokens, np.zeros(rows, np.int32), 2,
                                                      SamplerSettings(temperature=1.0, seed=5), num_speculative=3)
    vocab = tiny_lm.vocab_size
    p1 = tf.nn.softmax(tiny_lm.model(prompt[None])[0, -1]).numpy().astype(np.float64)
    both = np.concatenate([np.broadcast_to(prompt, (vocab, len(prompt))), np.arange(vocab)[:, None]], 1)
    p2 = p1 @ tf.nn.softmax(tiny_lm.model(both.astype(np.int32))[:, -1]).numpy().astype(np.float64)
    for j, probs in ((0, p1), (1, p2)):
        assert _chi2_pvalue(out[:, j], probs) > ALPHA, f"new token {j}"
    assert stats["rounds"] == 1


def test_sampling_is_repeatable_with_a_seed(tiny_lm, draft_lm, lm_text):
    from kerasllm.generation.samplers import SamplerSettings

    ids = tiny_lm.tokenizer.encode(lm_text[:10])[None]
    spec = _decoder(tiny_lm, draft_lm)
    run = [spec.generate(ids, np.zeros(1, np.int32), 40, SamplerSettings(temperature=0.9, top_k=20, seed=s))[0]
           for s in (3, 3, 4)]
    np.testing.assert_array_equal(run[0], run[1])
    assert not np.array_equal(run[0], run[2])


def test_bad_pairs_and_arguments(tiny_lm, tiny_lstm, draft_lm, lm_text):
    import kerasllm
    from kerasllm.generation.speculative import SpeculativeDecoder

    ids = tiny_lm.tokenizer.encode(lm_text[:10])[None]
    other_vocab = kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size + 1, hidden=16,
                                                      layers=1, heads=2, context_length=tiny_lm.context_length)
    with pytest.raises(ValueError, match="share the vocabulary"):
        SpeculativeDecoder(tiny_lm.model, other_vocab.model)
    with pytest.raises(ValueError, match="Transformer"):
        SpeculativeDecoder(tiny_lm.model, tiny_lstm.model)
    short = kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size, hidden=16, layers=1,
                                                heads=2, context_length=tiny_lm.context_length // 2)
    with pytest.raises(ValueError, match="context_length"):
        SpeculativeDecoder(tiny_lm.model, short.model)
    with pytest.raises(ValueError, match="num_speculative"):
        tiny_lm.generate_tokens(ids, max_new_tokens=5, draft=draft_lm, num_speculative=0)
    with pytest.raises(ValueError, match="context window"):
        tiny_lm.generate_tokens(ids, max_new_tokens=tiny_lm.context_length, draft=draft_lm)
    with pytest.raises(TypeError, match="draft must be a LanguageModel"):
        tiny_lm.generate_tokens(ids, max_new_tokens=5, draft=draft_lm.model)
