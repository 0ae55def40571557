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


PERIOD = "the cat sat on the mat; the dog sat on the log. "  # 48 chars > context 32: the phase needs context


@pytest.fixture(scope="session")
def periodic_lm():
    """A tiny Transformer that learned to continue a periodic text (about 20 s on one core): which
    word follows "the " or "sat on the " depends on tokens far back, so its greedy output changes
    with the context window (the runtimes agree only if they use the same window)."""
    import tasks

    return tasks.train_language_model(PERIOD * 400, architecture="transformer", tokenizer="char", context_length=32,
                                      steps=300, seed=0, hidden=48, layers=2, heads=2, ff=96, batch_size=16,
                                      learning_rate=1e-2, warmup_steps=20, verbose=0)


@pytest.fixture(scope="session")
def periodic_runtimes(periodic_lm, tmp_path_factory):
    """The periodic model exported once: (SavedModel runtime, TFLite runtime, SavedModel path)."""
    import tasks
    from kerasllm.export.layout import read_manifest
    from kerasllm.runtime.language_model import SavedModelLanguageModel, load_tflite

    paths = tasks.export(periodic_lm, tmp_path_factory.mktemp("lm") / "periodic")
    version_dir = paths["version_dir"]
    return SavedModelLanguageModel(version_dir, read_manifest(version_dir)), load_tflite(paths["tflite"]), \
        paths["saved_model"]
