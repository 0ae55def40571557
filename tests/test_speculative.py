"""Speculative decoding: greedy output equals the target's own (alone, batched, past the context),
the acceptance rule samples the target's distribution (chi-square, on the rule and through the
compiled loop), and bad pairings or arguments get clear errors."""
import numpy as np
import pytest

from tests.conftest_lm import PERIOD

ALPHA = 1e-3  # chi-square tests: a correct rule fails one of them about once in a thousand runs


@pytest.fixture(scope="module")
def draft_lm(tiny_lm):
    """An untrained 1-layer draft for the session's tiny Transformer: no training to wait for, and
    its proposals are often rejected, so the correction path runs (the rules do not need a good draft)."""
    import kerasllm

    return kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size, hidden=16, layers=1,
                                               heads=2, ff=32, context_length=tiny_lm.context_length, seed=5)


def test_greedy_equals_target_greedy_past_the_context(periodic_lm):
    """The periodic model depends on context, so a wrong cache slot or window changes its output.
    Generation runs past the context (two cache rebuilds), with a perfect and a useless draft."""
    import kerasllm

    useless = kerasllm.language_model_from_config("transformer", vocab_size=periodic_lm.vocab_size, hidden=16,
                                                  layers=1, heads=1, ff=32, context_length=32, seed=3)
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]  # a one-token prompt
    n = 2 * periodic_lm.context_length + 5
    expected = periodic_lm.generate_tokens(ids, n)
    for draft, k in ((periodic_lm, 4), (useless, 3)):
        spec = periodic_lm.with_draft(draft, num_speculative=k)
        np.testing.assert_array_equal(spec.generate_tokens(ids, n), expected)
        rate = spec.stats["acceptance_rate"]
        assert rate == 1.0 if draft is periodic_lm else rate < 0.7, rate  # both accepting and rejecting ran


def test_greedy_with_a_restricted_draft_vocabulary(periodic_lm, tiny_lm, draft_lm, lm_text):
    """``draft_vocab``: the draft proposes only those tokens (the target still emits any): greedy output
    unchanged, past the context and in a left-padded batch; the tokens outside are never accepted."""
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]
    n = 2 * periodic_lm.context_length + 5
    used = np.unique(periodic_lm.generate_tokens(ids, n))
    half = used[::2]  # the perfect draft may propose only half of the tokens it would
    spec = periodic_lm.with_draft(periodic_lm, num_speculative=4, draft_vocab=half)
    np.testing.assert_array_equal(spec.generate_tokens(ids, n), periodic_lm.generate_tokens(ids, n))
    assert 0 < spec.stats["acceptance_rate"] < 1, spec.stats
    prompts = [lm_text[200:201], lm_text[300:309], lm_text[400:425]]
    spec = tiny_lm.with_draft(draft_lm, num_speculative=3, draft_vocab=tiny_lm.vocab_size // 2)  # the first ids
    assert spec.generate(prompts, max_new_tokens=30) == tiny_lm.generate(prompts, max_new_tokens=30)


def test_greedy_batch_of_prompts_of_different_lengths(tiny_lm, draft_lm, lm_text):
    prompts = [lm_text[200:201], lm_text[300:309], lm_text[400:425]]  # left-padded rows sharing one cache index
    spec = tiny_lm.with_draft(draft_lm, num_speculative=3)
    assert spec.generate(prompts, max_new_tokens=30) == tiny_lm.generate(prompts, max_new_tokens=30)
    assert 0 < spec.stats["acceptance_rate"] <= 1 and spec.stats["new_tokens"] == 30
    assert tiny_lm.with_draft(draft_lm, num_speculative=3) is spec  # compiled functions are reused


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
                                   tf.constant(rng.random(rows), tf.float32))
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


@pytest.mark.parametrize("restricted", [False, True])
def test_sampled_speculative_follows_the_target_through_the_loop(tiny_lm, draft_lm, lm_text, restricted):
    """Many rows of one prompt, sampled at temperature 1: the second new token (the first the
    acceptance rule chooses, after a round of draft proposals and cache updates) is distributed as
    the target's sum over t1 of p(t1 | prompt) p(t2 | prompt, t1). Four seeds of 250 rows share one
    compiled loop (the seed is a run-time input). ``restricted``: the draft proposes only every
    other token id (``draft_vocab``), its q zero elsewhere."""
    from kerasllm._tf import tf

    prompt = tiny_lm.tokenizer.encode(lm_text[3000:3010])
    draft_vocab = np.arange(1, tiny_lm.vocab_size, 2) if restricted else None
    spec = tiny_lm.with_draft(draft_lm, num_speculative=3, draft_vocab=draft_vocab)
    tokens = np.broadcast_to(prompt, (250, len(prompt)))
    out = np.concatenate([spec.generate_tokens(tokens, 2, temperature=1.0, seed=seed)[:, len(prompt):]
                          for seed in (11, 12, 13, 14)])
    assert spec.stats["rounds"] == 1
    vocab = tiny_lm.vocab_size
    p1 = tf.nn.softmax(tiny_lm.model(prompt[None])[0, -1]).numpy().astype(np.float64)
    both = np.concatenate([np.broadcast_to(prompt, (vocab, len(prompt))), np.arange(vocab)[:, None]], 1)
    p2 = p1 @ tf.nn.softmax(tiny_lm.model(both.astype(np.int32))[:, -1]).numpy().astype(np.float64)
    for j, probs in ((0, p1), (1, p2)):
        assert _chi2_pvalue(out[:, j], probs) > ALPHA, f"new token {j}"
    # the test has power: the draft's distribution for the first token is far from the target's
    q1 = tf.nn.softmax(draft_lm.model(prompt[None])[0, -1]).numpy().astype(np.float64)
    assert _chi2_pvalue(np.random.default_rng(0).choice(vocab, 1000, p=q1 / q1.sum()), p1) < 1e-6


def test_prompt_lookup_greedy_equals_target_greedy(periodic_lm, tiny_lm, lm_text):
    """Prompt lookup (no draft model): proposals copied from earlier occurrences, rounds without one
    run a plain step; both branches run here, past the context and in a left-padded batch."""
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]  # nothing to look up at first: plain steps
    n = periodic_lm.context_length + 5  # past the context: one window rebuild
    spec = periodic_lm.with_draft("prompt_lookup", num_speculative=4)
    np.testing.assert_array_equal(spec.generate_tokens(ids, n), periodic_lm.generate_tokens(ids, n))
    assert spec.stats["plain_steps"] > 0 and spec.stats["rounds"] > 0
    assert 0 < spec.stats["acceptance_rate"] < 1  # copies accepted and rejected ("the " has four continuations)
    prompts = [lm_text[200:201], lm_text[300:340], lm_text[400:425]]
    spec = tiny_lm.with_draft("prompt_lookup", num_speculative=3)
    assert spec.generate(prompts, max_new_tokens=30) == tiny_lm.generate(prompts, max_new_tokens=30)


def test_lookup_proposals():
    from kerasllm._tf import tf
    from kerasllm.generation.speculative import lookup_proposals

    def run(row, last, pad, k):
        proposals, found = lookup_proposals(tf.constant([row], tf.int32), tf.constant(last), tf.constant([pad]), k)
        return proposals.numpy()[0].tolist(), bool(found.numpy()[0])

    # the latest earlier "5 6" (end 7), then what followed it; the longer n-gram wins over a later shorter one
    assert run([0, 0, 5, 6, 7, 8, 5, 6, 9, 9, 5, 6, 0, 0], 11, 2, 4) == ([9, 9, 5, 6], True)
    assert run([1, 2, 3, 9, 3, 1, 2, 3, 0], 7, 0, 2) == ([9, 3], True)
    assert run([3, 1, 2, 3, 1, 2, 0, 0], 5, 0, 5) == ([3, 1, 2, 3, 1], True)  # repeats with the period (3)
    assert run([1, 2, 3, 0], 2, 0, 2)[1] is False  # nothing earlier
    assert run([7, 7, 1, 2, 7], 4, 2, 2)[1] is False  # pads are not looked at


def test_prompt_lookup_sampled_follows_the_target(periodic_lm):
    """Lookup proposals are a point mass q: the rule keeps each token distributed as the target's p
    (temperature 2 here, so p is far from one-hot). The prompt holds every token id, so every row
    finds its newest token earlier in the window and the round is a verify pass."""
    from kerasllm._tf import tf

    vocab, temperature = periodic_lm.vocab_size, 2.0
    prompt = np.concatenate([np.random.default_rng(3).permutation(vocab),
                             periodic_lm.tokenizer.encode(PERIOD[:8])]).astype(np.int32)
    assert len(prompt) + 2 <= periodic_lm.context_length
    spec = periodic_lm.with_draft("prompt_lookup", num_speculative=3)
    tokens = np.broadcast_to(prompt, (250, len(prompt)))
    out, rounds = [], 0
    for seed in (21, 22, 23, 24):
        out.append(spec.generate_tokens(tokens, 2, temperature=temperature, seed=seed)[:, len(prompt):])
        rounds += spec.stats["rounds"]
    out = np.concatenate(out)
    assert rounds == 4  # the acceptance rule ran in every call

    def probs(x):
        return tf.nn.softmax(periodic_lm.model(x)[:, -1] / temperature).numpy().astype(np.float64)

    p1 = probs(prompt[None])[0]
    p2 = p1 @ probs(np.concatenate([np.broadcast_to(prompt, (vocab, len(prompt))), np.arange(vocab)[:, None]],
                                   1).astype(np.int32))
    for j, p in ((0, p1), (1, p2)):
        assert _chi2_pvalue(out[:, j], p) > ALPHA, f"new token {j}"
    # the test has power: a rule that kept every proposal (what followed token 1 earlier) would fail it
    from kerasllm.generation.speculative import lookup_proposals

    rows = np.concatenate([np.broadcast_to(prompt, (len(out), len(prompt))), out[:, :1]], 1)
    proposed, _ = lookup_proposals(tf.constant(rows), tf.constant(len(prompt)), tf.zeros([len(out)], tf.int32), 3)
    assert _chi2_pvalue(proposed.numpy()[:, 0], p2) < 1e-6


def test_new_seed_or_temperature_does_not_compile_again(tiny_lm, draft_lm):
    """Seed and sampling settings are run-time inputs of ONE XLA program: the function is traced
    once and lowers to the same HLO for any seed or temperature (a value XLA must know at compile
    time would be baked into the HLO, one compilation per value; a strided slice at the accepted
    count once did that to the seed)."""
    from kerasllm.generation.window import PAD_MULTIPLE

    spec = tiny_lm.with_draft(draft_lm, num_speculative=2)
    ids = np.arange(1, 6, dtype=np.int32)[None]
    for seed in (1, 2):
        spec.generate_tokens(ids, 4, temperature=1.0, seed=seed)
    sampled = [f for sig, f in spec._functions.items() if sig[-1][0] == "sample"]
    assert len(sampled) == 1 and sampled[0].experimental_get_tracing_count() == 1
    win, pad = np.zeros((1, PAD_MULTIPLE), np.int32), np.array([PAD_MULTIPLE - 5], np.int32)

    def hlo(seed, temperature):
        return sampled[0].experimental_get_compiler_ir(win, pad, np.int32(4), np.int32(0), np.int32(seed),
                                                        np.float32(temperature), np.int32(0),
                                                        np.float32(1.0))(stage="hlo")

    assert hlo(1, 1.0) == hlo(123456, 1.0) == hlo(1, 0.5)


def test_sampling_is_seeded_and_really_samples(periodic_lm):
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]
    spec = periodic_lm.with_draft(periodic_lm, num_speculative=4)
    a = spec.generate_tokens(ids, 31, temperature=4.0, seed=1)
    np.testing.assert_array_equal(a, spec.generate_tokens(ids, 31, temperature=4.0, seed=1))
    assert not (a == spec.generate_tokens(ids, 31, temperature=4.0, seed=2)).all()
    assert not (a == periodic_lm.generate_tokens(ids, 31)).all()
    b = spec.generate_tokens(ids, 31, temperature=4.0, top_k=3, top_p=0.9, seed=1)  # filters compile too
    assert b.shape == a.shape and not (a == b).all()


def test_bad_pairs_and_arguments(tiny_lm, tiny_lstm, draft_lm, lm_text):
    import kerasllm

    other_vocab = kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size + 1, hidden=16,
                                                      layers=1, heads=2, context_length=tiny_lm.context_length)
    with pytest.raises(ValueError, match="share the vocabulary"):
        tiny_lm.with_draft(other_vocab)
    with pytest.raises(ValueError, match="Transformer"):
        tiny_lm.with_draft(tiny_lstm)
    short = kerasllm.language_model_from_config("transformer", vocab_size=tiny_lm.vocab_size, hidden=16, layers=1,
                                                heads=2, context_length=tiny_lm.context_length // 2)
    with pytest.raises(ValueError, match="context_length"):
        tiny_lm.with_draft(short)
    with pytest.raises(ValueError, match="num_speculative"):
        tiny_lm.with_draft(draft_lm, num_speculative=0)
    with pytest.raises(TypeError, match="draft must be a LanguageModel"):
        tiny_lm.with_draft(draft_lm.model)
    with pytest.raises(ValueError, match="prompt_lookup"):
        tiny_lm.with_draft("lookup")
    for bad in (0, tiny_lm.vocab_size + 1, [tiny_lm.vocab_size], [], [-1]):
        with pytest.raises(ValueError, match="draft_vocab"):
            tiny_lm.with_draft(draft_lm, draft_vocab=bad)
    with pytest.raises(ValueError, match="prompt lookup"):
        tiny_lm.with_draft("prompt_lookup", draft_vocab=10)
    with pytest.raises(ValueError, match="temperature"):  # the shared argument checks run before compiling
        tiny_lm.with_draft(draft_lm).generate_tokens(tiny_lm.tokenizer.encode("ab")[None], 5, temperature=-1)
