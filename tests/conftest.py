"""Shared fixtures: one small trained model of each kind per test session."""
from pathlib import Path

import pytest

from tests.conftest_lm import lm_text, periodic_lm, periodic_runtimes, tiny_lm, tiny_lstm  # noqa: F401  (LM fixtures)

_ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (or beside the folder of worktrees that holds it, as benchmarks/ looks)
SHARED_DATA = next((p / "shared" / "data" for p in _ROOT.parents if (p / "shared" / "data").is_dir()),
                   _ROOT.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def topic_split():
    """Python's documentation paragraphs labelled by topic, split 80/20 (built in, no download)."""
    from kerasllm.data import default_classification_data, stratified_split

    return stratified_split(*default_classification_data(), test_size=0.2, seed=0)


@pytest.fixture(scope="session")
def classifier(topic_split):
    """The default classifier (SimpleRNN + bag of n-grams) trained once for the session. Its 290
    texts are too few to choose the recurrent path's weight (it would be 0), so the weight is set:
    the export parity tests then check the recurrent maths too. Lengths shorter than the defaults'
    (which read up to 478 words here) keep exports quick; the bag still reads further than the
    recurrent path, so the tests cover both."""
    import tasks

    train, train_labels, _, _ = topic_split
    return tasks.train_classifier(train, train_labels, seed=0, max_epochs=8, recurrent_weight=0.5,
                                  max_length=160, recurrent_length=64)


@pytest.fixture(scope="session")
def classifier_export(classifier, tmp_path_factory):
    """The session classifier exported (SavedModel + TFLite) under a temporary saved_models root."""
    import tasks

    root = tmp_path_factory.mktemp("saved_models")
    return tasks.export(classifier, root / "topics")


@pytest.fixture(scope="session")
def quickstart_run(tmp_path_factory):
    """``python -m kerasllm quickstart --quick`` once per session, in a child process as a user runs it:
    (completed process, saved_models folder, report folder)."""
    import os
    import subprocess
    import sys

    work = tmp_path_factory.mktemp("quickstart")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("KERASLLM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = str(root)
    done = subprocess.run([sys.executable, "-m", "kerasllm", "quickstart", "--quick", "--out", "saved_models",
                           "--report-dir", "report"], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    return done, work / "saved_models", work / "report"
