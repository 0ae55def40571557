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
    the export parity tests then check the recurrent maths too."""
    import tasks

    train, train_labels, _, _ = topic_split
    return tasks.train_classifier(train, train_labels, seed=0, max_epochs=8, recurrent_weight=0.5)


@pytest.fixture(scope="session")
def classifier_export(classifier, tmp_path_factory):
    """The session classifier exported (SavedModel + TFLite) under a temporary saved_models root,
    with the TF Serving bundle beside it (``serving=True``)."""
    import tasks

    root = tmp_path_factory.mktemp("saved_models")
    return tasks.export(classifier, root / "topics", serving=True)


QUICKSTART = "quickstart_run"


def _start_quickstart(config):
    """Start ``python -m kerasllm quickstart --quick`` in a child process, as a user runs it: the
    child works on its own while the tests that do not need it run (they run first, see below)."""
    import os
    import subprocess
    import sys

    work = config._tmp_path_factory.mktemp("quickstart")
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("KERASLLM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = str(root)
    args = [sys.executable, "-m", "kerasllm", "quickstart", "--quick", "--out", "saved_models",
            "--report-dir", "report"]
    with open(work / "stdout.txt", "wb") as out, open(work / "stderr.txt", "wb") as err:
        process = subprocess.Popen(args, cwd=work, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    config._kerasllm_quickstart = (process, work)


@pytest.hookimpl(trylast=True)  # after -k/-m deselection
def pytest_collection_modifyitems(session, config, items):
    """The quickstart run takes minutes of one process: start it now and run the tests that need it
    last, so it overlaps the rest of the session instead of holding up its first test."""
    needs = [item for item in items if QUICKSTART in getattr(item, "fixturenames", ())]
    if needs and not config.option.collectonly:
        items[:] = [item for item in items if QUICKSTART not in getattr(item, "fixturenames", ())] + needs
        _start_quickstart(config)


def pytest_unconfigure(config):
    started = getattr(config, "_kerasllm_quickstart", None)
    if started is not None and started[0].poll() is None:  # the session ended before it was needed
        started[0].kill()
        started[0].wait()


@pytest.fixture(scope="session")
def quickstart_run(request):
    """``python -m kerasllm quickstart --quick`` once per session, in a child process as a user runs it
    (started at collection): (completed process, saved_models folder, report folder)."""
    import locale
    import subprocess

    started = getattr(request.config, "_kerasllm_quickstart", None)
    if started is None:
        _start_quickstart(request.config)
        started = request.config._kerasllm_quickstart
    process, work = started
    process.wait(timeout=900)
    encoding = locale.getpreferredencoding(False)
    stdout, stderr = ((work / name).read_text(encoding=encoding) for name in ("stdout.txt", "stderr.txt"))
    done = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return done, work / "saved_models", work / "report"
