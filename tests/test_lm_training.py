"""Language-model training: distillation from a teacher, throughput paths, budgets, strategies, progress."""
import numpy as np
import pytest


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
