"""Language-model training: distillation from a teacher, throughput paths, budgets, strategies, progress."""
from pathlib import Path

import numpy as np
import pytest

from tests.distributed_helpers import finish as _finish, start, two_worker_envs


def _kl_to(teacher, student, text):
    """Mean KL(teacher || student) of the next-token distributions over ``text`` (one window)."""
    from kerasllm._tf import tf

    ids = teacher.tokenizer.encode(text)[None, :teacher.context_length]
    p = tf.nn.log_softmax(teacher.model(ids)).numpy()
    q = tf.nn.log_softmax(student.model(ids)).numpy()
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


STUDENT = dict(steps=150, seed=1, hidden=32, layers=1, heads=2, ff=64, batch_size=16, learning_rate=1e-2,
               warmup_steps=5, verbose=0)


def test_distilled_student_matches_teacher_better_than_one_trained_on_text(tiny_lm, lm_text):
    import tasks

    # Over reversed text the text's own next characters and the teacher's (forward) predictions
    # disagree, so only a student that learns from the teacher comes close to it.
    reversed_text = lm_text[:20000][::-1]
    distilled = tasks.train_language_model(reversed_text, teacher=tiny_lm, distill_alpha=0.0, **STUDENT)
    plain = tasks.train_language_model(reversed_text, teacher=tiny_lm, distill_alpha=1.0, **STUDENT)  # text only
    assert distilled.tokenizer is tiny_lm.tokenizer and distilled.context_length == tiny_lm.context_length
    held_out = lm_text[-2000:][::-1]
    assert _kl_to(tiny_lm, distilled, held_out) < 0.5 * _kl_to(tiny_lm, plain, held_out)


def test_distillation_rejects_bad_teacher_and_settings(tiny_lm, lm_text):
    import tasks

    with pytest.raises(TypeError, match="teacher must be a trained LanguageModel"):
        tasks.train_language_model(lm_text, teacher="gpt", steps=1)
    with pytest.raises(ValueError, match="longer than the teacher's context"):
        tasks.train_language_model(lm_text, teacher=tiny_lm, context_length=tiny_lm.context_length + 1, steps=1,
                                   verbose=0)
    with pytest.raises(ValueError, match="distill_alpha"):
        tasks.train_language_model(lm_text, teacher=tiny_lm, distill_alpha=1.5, steps=1, verbose=0)


def test_teacher_generations_are_the_teachers_own_continuations_of_text_windows(tiny_lm, lm_text):
    from kerasllm.training.lm import GENERATION_BATCH, GENERATION_PROMPT, teacher_generations

    ids = np.asarray(tiny_lm.tokenizer.encode(lm_text[:5000]), np.int32)
    length = tiny_lm.context_length
    stream = teacher_generations(tiny_lm, ids, tokens=2 * GENERATION_BATCH * length, length=length, seed=3)
    rows = stream.reshape(-1, length)
    assert rows.shape == (2 * GENERATION_BATCH, length) and stream.dtype == np.int32
    text = ids.tobytes()
    for row in rows:  # every prompt is a window of the text
        assert row[:GENERATION_PROMPT].tobytes() in text
    greedy, sampled = rows[:GENERATION_BATCH], rows[GENERATION_BATCH:]
    again = tiny_lm.generate_tokens(greedy[:, :GENERATION_PROMPT], length - GENERATION_PROMPT, temperature=0.0)
    np.testing.assert_array_equal(greedy, again)  # the first batch: the teacher's greedy output
    argmax = tiny_lm.generate_tokens(sampled[:, :GENERATION_PROMPT], length - GENERATION_PROMPT, temperature=0.0)
    assert (sampled != argmax).any(axis=1).mean() > 0.5  # the second: sampled
    short = teacher_generations(tiny_lm, ids, tokens=10, length=10, seed=3).reshape(-1, 10)  # a 5-token prompt
    np.testing.assert_array_equal(short, tiny_lm.generate_tokens(short[:, :5], 5, temperature=0.0))
    with pytest.raises(ValueError, match="nothing to generate"):
        teacher_generations(tiny_lm, ids, tokens=100, length=1)


def test_draft_trained_on_the_targets_generations_is_accepted_more_often(tiny_lm, lm_text):
    import tasks

    # Both learn from hard labels only (distill_alpha=1), on reversed text: the only way to learn what
    # the (forward) target generates is from the generated half of the training tokens.
    size = dict(steps=120, seed=1, hidden=32, layers=1, heads=2, ff=64, batch_size=16, learning_rate=1e-2,
                warmup_steps=5, verbose=0, distill_alpha=1.0)
    reversed_text = lm_text[:20000][::-1]
    on_policy = tasks.train_draft_model(tiny_lm, reversed_text, time_budget_s=None, **size)
    text_only = tasks.train_draft_model(tiny_lm, reversed_text, time_budget_s=None, distill_generated=0.0, **size)
    assert on_policy.history["generated_tokens"] > 0 and "generated_tokens" not in text_only.history
    ids = tiny_lm.tokenizer.encode(lm_text[-3000:])
    prompts = [np.asarray(ids[s:s + 8], np.int32)[None] for s in range(0, 2000, 400)]

    def acceptance(draft):
        decoder = tiny_lm.with_draft(draft, num_speculative=4)
        accepted = proposed = 0
        for p in prompts:
            out = decoder.generate_tokens(p, 48)
            np.testing.assert_array_equal(out, tiny_lm.generate_tokens(p, 48))  # greedy: the target's tokens
            accepted, proposed = accepted + decoder.stats["accepted"], proposed + decoder.stats["proposed"]
        return accepted / proposed

    rates = acceptance(on_policy), acceptance(text_only)
    print("greedy acceptance, on-policy vs text-only draft", rates)
    assert rates[0] > rates[1] + 0.2


def test_cli_trains_a_draft_and_generates_the_targets_tokens_with_it(tiny_lm, lm_text, tmp_path, capsys):
    import json

    from kerasllm.cli import main

    target, draft, text = tmp_path / "target", tmp_path / "draft", tmp_path / "text.txt"
    tiny_lm.save(target)
    text.write_text(lm_text[:5000], encoding="utf-8")
    assert main(["lm", "draft", "--target", str(target), "--text", str(text), "--steps", "10", "--save", str(draft),
                 "hidden=16", "ff=32", "distill_generated=0.2", "verbose=0"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["generated_tokens"] > 0 and (draft / "language_model.json").is_file()
    args = ["lm", "generate", "--model", str(target), "--max-new-tokens", "40", "ROMEO:", "To be"]
    assert main(args) == 0
    plain = capsys.readouterr().out
    for extra in (["--draft", str(draft), "--num-speculative", "3"], ["--draft", "prompt_lookup"]):
        assert main(args + extra) == 0
        assert capsys.readouterr().out == plain  # greedy: the target's own text


def test_distill_generated_is_checked(tiny_lm, lm_text):
    import tasks

    with pytest.raises(ValueError, match="distill_generated needs a teacher"):
        tasks.train_language_model(lm_text, distill_generated=0.5, steps=1, verbose=0)
    with pytest.raises(ValueError, match=r"distill_generated must be a share in \[0, 1\)"):
        tasks.train_language_model(lm_text, teacher=tiny_lm, distill_generated=1.0, steps=1, verbose=0)


# --- data-parallel training: the pattern of tests/test_distributed.py, for language models ----------
WORKER = Path(__file__).with_name("lm_distributed_worker.py")


def _run(mode, out, *extra, env=None):
    return start(WORKER, mode, out, *extra, env=env)


@pytest.fixture(scope="module")
def single_device_logits(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm_single") / "logits.npy"
    _finish(_run("single", out))
    return np.load(out)


def test_mirrored_training_and_resume_match_single_device(single_device_logits, tmp_path):
    _finish(_run("mirrored", tmp_path / "logits.npy", tmp_path / "ckpt"), replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), single_device_logits, atol=1e-4)
    np.testing.assert_allclose(np.load(tmp_path / "logits_resumed.npy"), single_device_logits, atol=1e-4)


def test_two_workers_on_loopback_match_single_device(single_device_logits, tmp_path):
    processes = [_run("multi_worker", tmp_path / "logits.npy", env=env) for env in two_worker_envs()]
    for p in processes:
        _finish(p, replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), single_device_logits, atol=1e-4)


# --- progress and time budgets ------------------------------------------------------------------------
def test_progress_line_shows_elapsed_rate_and_estimate():
    import io

    from kerasllm.training.lm import Progress

    out = io.StringIO()
    p = Progress(1, steps=100, stream=out)
    p.update(50, 10.0, 5.0, 5000.0, 2.0)
    assert out.getvalue() == "step 50/100  00:10 elapsed, ~00:10 left  5.0 steps/s, 5.0k tok/s  loss 2.0000\n"
    budget = Progress(1, time_budget_s=600, stream=io.StringIO())
    assert "~09:50 left" in budget.line_for(7, 10.0, 2.0, 100.0, 3.0)  # the budget bounds the estimate
    assert "compiling" in budget.line_for(1, 1.0, None, 0.0, 4.0)


def test_training_prints_progress_never_unknown(lm_text, capsys):
    import tasks

    tasks.train_language_model(lm_text[:5000], context_length=16, steps=3, hidden=16, layers=1, heads=2, ff=32,
                               batch_size=4, verbose=1)
    out = capsys.readouterr().out
    assert "step 3/3" in out and "elapsed" in out and "Unknown" not in out


def test_budget_plan_grows_with_the_budget_and_machine_speed():
    from kerasllm.training.budget import flops_per_token, matmul_params, plan

    small, why = plan(60, 65, rate=50e9)
    large, _ = plan(3600, 65, rate=50e9)
    faster, _ = plan(60, 65, rate=500e9)
    assert "GFLOP/s" in why and str(small["hidden"]) in why
    size = lambda c: matmul_params({**c, "vocab_size": 65})  # noqa: E731
    assert size(small) < size(large) and size(small) < size(faster)
    assert flops_per_token({**large, "vocab_size": 65}) > flops_per_token({**small, "vocab_size": 65})


def test_time_budget_alone_chooses_and_reports_the_size(lm_text):
    import tasks

    lm = tasks.train_language_model(lm_text[:20000], time_budget_s=6, verbose=0, batch_size=4)
    plan_note, cfg = lm.history["plan"], lm.history["config"]
    assert plan_note and f"{cfg['layers']} layers x {cfg['hidden']}" in plan_note
    assert cfg["batch_size"] == 4  # what the user set stays as set
    assert lm.history["steps"] >= 1 and lm.history["train_seconds"] < 60


def test_lstm_training_compiles_with_xla_in_seconds_and_matches_keras_lstm():
    """The LSTM LM's training path (lstm_sequence and its own gradient) computes what Keras' LSTM
    layers compute on the same weights, as a plain graph and XLA-compiled (in seconds)."""
    import time

    from kerasllm._tf import tf
    from kerasllm.models.language_model import build_model

    model = build_model("lstm", dict(vocab_size=30, hidden=16, layers=2, context_length=24), 0)
    tokens = tf.constant(np.random.default_rng(0).integers(0, 30, (4, 25)).astype(np.int32))

    def keras_lstm(x):
        h = model.embedding(x)
        for lstm in model.lstms:
            h = lstm(h)[0]
        return model.head(h)

    def gradients(forward, tokens):
        with tf.GradientTape() as tape:
            logits = forward(tokens[:, :-1])
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(tokens[:, 1:], logits))
        return [tf.convert_to_tensor(g) for g in tape.gradient(loss, model.trainable_variables)], logits

    expected, expected_logits = gradients(keras_lstm, tokens)
    started = time.perf_counter()
    compiled = tf.function(lambda t: gradients(model, t), jit_compile=True)(tokens)
    assert time.perf_counter() - started < 120  # seconds (about 3 on an idle core; 30 on a core shared by 4 jobs)
    for got, logits in (compiled, tf.function(lambda t: gradients(model, t))(tokens)):
        np.testing.assert_allclose(logits.numpy(), expected_logits.numpy(), atol=1e-5)
        assert len(got) == len(expected) == 9
        for a, b in zip(got, expected):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5, rtol=1e-4)
