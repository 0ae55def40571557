"""Speculative decoding: greedy output identical to the target alone (with a perfect and a useless
draft), and the acceptance rule emits tokens distributed as the target's probabilities."""
import numpy as np
import pytest

from tests.conftest_lm import PERIOD


@pytest.fixture(scope="module")
def perfect(periodic_lm):
    """The target as its own draft: every proposal is right (one compiled loop shared by two tests)."""
    from kerasllm.generation.speculative import SpeculativeDecoder

    return SpeculativeDecoder(periodic_lm, periodic_lm, k=4)


def test_speculative_greedy_equals_target_greedy(periodic_lm, perfect):
    import kerasllm
    from kerasllm.generation.speculative import SpeculativeDecoder

    useless = kerasllm.language_model_from_config("transformer", vocab_size=periodic_lm.vocab_size, hidden=16,
                                                  layers=1, heads=1, ff=32, context_length=32, seed=3)
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]  # a one-token prompt
    expected = periodic_lm.generate_tokens(ids, 31)
    for spec in (perfect, SpeculativeDecoder(periodic_lm, useless, k=3)):
        np.testing.assert_array_equal(spec.generate_tokens(ids, 31), expected)
        rate = spec.stats["acceptance_rate"]
        assert (rate == 1.0) if spec is perfect else (rate < 0.7)
    with pytest.raises(ValueError, match="context"):
        perfect.generate_tokens(ids, 32)
    with pytest.raises(ValueError, match="batch 1"):
        perfect.generate_tokens(np.concatenate([ids, ids]), 5)


def test_speculative_sampling_is_seeded(periodic_lm, perfect):
    ids = periodic_lm.tokenizer.encode(PERIOD[3:4])[None]
    a = perfect.generate_tokens(ids, 31, temperature=4.0, seed=1)
    assert (a == perfect.generate_tokens(ids, 31, temperature=4.0, seed=1)).all()
    assert not (a == perfect.generate_tokens(ids, 31, temperature=4.0, seed=2)).all()
    assert not (a == periodic_lm.generate_tokens(ids, 31)).all()  # really sampled


def test_acceptance_rule_follows_the_target_distribution():
    """20,000 rounds of the rule with fixed p (target) and q (draft): the first emitted token is
    distributed as p after the prompt, and the second (when the first proposal was kept) as p after it."""
    from kerasllm._tf import tf
    from kerasllm.generation.speculative import accept

    rng = np.random.default_rng(0)
    trials, k, vocab = 20000, 2, 5
    p = rng.dirichlet(np.ones(vocab), k + 1).astype(np.float32)
    q = rng.dirichlet(np.ones(vocab), k).astype(np.float32)
    proposals = np.stack([rng.choice(vocab, trials, p=q[i]) for i in range(k)], 1).astype(np.int32)
    a, final = accept(tf.constant(np.broadcast_to(p, (trials, k + 1, vocab))),
                      tf.constant(np.broadcast_to(q, (trials, k, vocab))), tf.constant(proposals),
                      tf.constant(rng.random((trials, k), np.float32)), tf.constant(rng.random(trials, np.float32)))
    a, final = a.numpy(), final.numpy()
    first = np.where(a >= 1, proposals[:, 0], final)
    freq = np.bincount(first, minlength=vocab) / trials
    assert np.abs(freq - p[0]).max() < 0.015, (freq, p[0])
    kept = a >= 1
    second = np.where(a[kept] >= 2, proposals[kept, 1], final[kept])
    freq2 = np.bincount(second, minlength=vocab) / kept.sum()
    assert np.abs(freq2 - p[1]).max() < 0.025, (freq2, p[1])
    # and the rule is not trivially "always take p": with q == p every proposal is kept
    a_same, _ = accept(tf.constant(np.broadcast_to(p, (100, k + 1, vocab))),
                       tf.constant(np.broadcast_to(p[:k], (100, k, vocab))), tf.constant(proposals[:100]),
                       tf.constant(rng.random((100, k), np.float32)), tf.constant(rng.random(100, np.float32)))
    assert (a_same.numpy() == k).all()
