"""Session-scoped language models shared by the LM tests: tiny models trained for a few seconds."""
import pytest

# Small real text (Python's built-in docs): enough structure for greedy decoding to have clear winners.
def _text():
    from kerasllm.data import default_corpus

    return default_corpus()[:40000]


@pytest.fixture(scope="session")
def lm_text():
    return _text()


@pytest.fixture(scope="session")
def tiny_lm(lm_text):
    import tasks

    return tasks.train_language_model(lm_text, architecture="transformer", tokenizer="char", context_length=64,
                                      steps=80, seed=0, hidden=48, layers=2, heads=2, ff=96, batch_size=16,
                                      learning_rate=3e-3, warmup_steps=10, verbose=0)


@pytest.fixture(scope="session")
def tiny_lstm(lm_text):
    import tasks

    return tasks.train_language_model(lm_text, architecture="lstm", tokenizer="char", context_length=32,
                                      steps=40, seed=0, hidden=48, layers=1, batch_size=16,
                                      learning_rate=1e-2, warmup_steps=5, verbose=0)
