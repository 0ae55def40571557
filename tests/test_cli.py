"""The command line as a user meets it: one package, ``python -m kerasllm``, quiet by default."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What TensorFlow, absl, LiteRT and tf_keras print when left alone (absl's I/W/E lines, Python logging, LiteRT).
NOISE_MARKERS = ("WARNING:tensorflow", "WARNING:absl", "INFO: Created TensorFlow Lite", "All log messages before absl",
                 "cuInit", "cuda drivers", "oneDNN", "non-serializable", "E0000", "I0000", "W0000")


def run_kerasllm(*args, timeout=600, cwd=ROOT):
    """``python -m kerasllm ARGS`` in a child process with this checkout first on the path, the
    environment a new user has (no logging variables set)."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERASLLM_VERBOSE", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "kerasllm", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def noise_lines(output):
    return [line for line in output.splitlines() if any(m in line for m in NOISE_MARKERS)]


def test_every_command_group_is_registered():
    from kerasllm.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(sub.choices) == {"quickstart", "classify", "similar", "lm", "compress", "serve"}


def test_verbose_is_accepted_before_and_after_the_command():
    from kerasllm.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["--verbose", "similar", "query", "--index", "x", "t"]).verbose is True
    assert parser.parse_args(["similar", "query", "--index", "x", "t", "--verbose"]).verbose is True
    assert parser.parse_args(["similar", "query", "--index", "x", "t"]).verbose is False


def test_tasks_do_not_import_the_command_line():
    code = "import sys, tasks, tasks.quickstart; print('kerasllm.cli' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout
    assert out.strip() == "False"


def test_python_dash_m_and_bad_input_error(tmp_path):
    help_text = run_kerasllm("--help")
    assert help_text.returncode == 0 and "quickstart" in help_text.stdout
    missing = run_kerasllm("similar", "build", "--data", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "i"))
    assert missing.returncode == 2 and "nope.csv" in missing.stderr and "Traceback" not in missing.stderr


def test_a_command_that_loads_tensorflow_is_quiet_and_verbose_shows_the_noise(classifier_export):
    """``classify train`` imports TensorFlow, trains, exports a SavedModel and runs LiteRT."""
    from kerasllm.data import default_classification_data

    texts, labels = default_classification_data()
    data = classifier_export["version_dir"].parents[1] / "cli-topics.tsv"
    # each text's first 12 words: the classifier's length buckets stop at 16 words (not 128), so the
    # child trains and converts a far smaller unrolled recurrence; what it prints is the same
    data.write_text("\n".join(f"{l}\t{' '.join(t.split()[:12])}" for t, l in zip(texts, labels)), encoding="utf-8")
    out = classifier_export["version_dir"].parents[1] / "cli-topics"
    quiet = run_kerasllm("classify", "train", "--data", str(data), "--out", str(out), "--epochs", "1")
    assert quiet.returncode == 0, quiet.stderr
    assert noise_lines(quiet.stdout + quiet.stderr) == []
    assert "exported version 1" in quiet.stdout
    loud = run_kerasllm("--verbose", "classify", "predict", "--model", str(out), "format a string")
    assert loud.returncode == 0, loud.stderr
    assert noise_lines(loud.stderr), "--verbose should let LiteRT's INFO line through"


@pytest.mark.parametrize("architecture", ["transformer", "lstm"])
def test_language_models_give_keras_a_config(architecture):
    """Without get_config tf_keras warns "Model's __init__() arguments contain non-serializable objects"
    whenever a model is saved; the fix is a config of plain values that rebuilds the same model."""
    from kerasllm.models.lstm_lm import LSTMLM, LSTMConfig
    from kerasllm.models.transformer_lm import TransformerConfig, TransformerLM

    if architecture == "transformer":
        model = TransformerLM(TransformerConfig(vocab_size=11, context_length=8, hidden=8, layers=1, heads=2, ff=8))
    else:
        model = LSTMLM(LSTMConfig(vocab_size=11, hidden=8, layers=1))
    config = model.get_config()
    assert config["config"]["vocab_size"] == 11
    clone = type(model).from_config(config)
    assert clone.config == model.config and clone.name == model.name
