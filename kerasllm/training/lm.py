"""Language-model training: random windows via tf.data, AdamW with warm-up and cosine decay,
gradient clipping, an XLA-compiled train step, resumable checkpoints, a progress bar with
loss and tokens per second, a step or wall-clock budget, and optional distillation from a teacher."""
from __future__ import annotations

import math
import time

import numpy as np

from kerasllm._tf import keras, no_autotune, tf


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``peak``, then cosine decay to ``peak * min_ratio`` at ``total`` steps.
    ``total`` is a variable: with a time budget it is set once the step speed is known."""

    def __init__(self, peak, warmup, total, min_ratio=0.1):
        self.peak, self.warmup, self.min_ratio = float(peak), int(warmup), float(min_ratio)
        self.total = tf.Variable(float(max(total, 1)), trainable=False, dtype=tf.float32, name="total_steps")

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / max(self.warmup, 1)
        progress = tf.clip_by_value((step - self.warmup) / tf.maximum(self.total - self.warmup, 1.0), 0.0, 1.0)
        cosine = self.peak * (self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + tf.cos(math.pi * progress)))
        return tf.where(step < self.warmup, warm, cosine)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup, "min_ratio": self.min_ratio}


def windows_dataset(ids, context_length, batch_size, seed):
    """Endless batches of (x, y) windows at uniformly random offsets of ``ids``."""
    data = tf.constant(np.asarray(ids, np.int32))
    n = len(ids) - context_length - 1
    if n < 1:
        raise ValueError(f"training text has {len(ids)} tokens: need more than context_length + 1 "
                         f"({context_length + 1}); use a shorter context_length or more text")
    offsets = tf.range(context_length + 1)

    def take(r):
        idx = tf.cast(tf.math.floormod(r, n), tf.int32)[:, None] + offsets[None, :]
        w = tf.gather(data, idx)
        return w[:, :-1], w[:, 1:]

    ds = tf.data.Dataset.random(seed=seed).batch(batch_size).map(take).prefetch(2)
    return no_autotune(ds)


def eval_batches(ids, context_length, batch_size):
    """Non-overlapping windows covering every next-token prediction once: (x, y, weight) batches."""
    ids = np.asarray(ids, np.int32)
    n = len(ids) - 1
    if n < 1:
        raise ValueError("text is too short to evaluate: it encodes to fewer than 2 tokens")
    starts = list(range(0, n, context_length))
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        x = np.zeros((batch_size, context_length), np.int32)
        y = np.zeros_like(x)
        w = np.zeros((batch_size, context_length), np.float32)
        for row, s in enumerate(chunk):
            m = min(context_length, n - s)
            x[row, :m], y[row, :m], w[row, :m] = ids[s:s + m], ids[s + 1:s + 1 + m], 1.0
        yield x, y, w


def distillation_loss(logits, teacher_logits, labels, temperature, alpha):
    """Per-token loss of a student distilled from a teacher (Hinton et al., 2015): ``alpha`` x
    cross-entropy with the next token + (1 - alpha) x T² x cross-entropy with the teacher's
    distribution softened by temperature T (the T² keeps the soft term's gradients at the hard
    term's scale). alpha=0, T=1 fits the teacher's own next-token distribution."""
    hard = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    soft_targets = tf.nn.softmax(tf.stop_gradient(teacher_logits) / temperature)
    soft = tf.nn.softmax_cross_entropy_with_logits(soft_targets, logits / temperature)
    return alpha * hard + (1.0 - alpha) * temperature ** 2 * soft, hard


def check_teacher(teacher, model, context_length, temperature, alpha):
    """The teacher's Keras model, after checking it can supervise ``model`` on windows of ``context_length``."""
    teacher_model = getattr(teacher, "model", teacher)
    if not isinstance(teacher_model, keras.Model) or not hasattr(teacher_model, "config"):
        raise TypeError(f"teacher must be a trained LanguageModel, got {type(teacher).__name__}")
    if teacher_model.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the teacher's vocabulary ({teacher_model.config.vocab_size}) differs from the "
                         f"student's ({model.config.vocab_size}): train the student with the teacher's tokenizer")
    if teacher_model.architecture == "transformer" and context_length > teacher_model.config.context_length:
        raise ValueError(f"context_length {context_length} is longer than the teacher's context "
                         f"({teacher_model.config.context_length}); use context_length <= "
                         f"{teacher_model.config.context_length}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"distill_temperature must be a positive number, got {temperature!r}")
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"distill_alpha must be in [0, 1], got {alpha!r}")
    return teacher_model


def use_xla(model, steps=None):
    """XLA speeds up the Transformer's training step, but compiling it costs seconds, which pays off
    only over a few hundred steps; compiling the LSTM's while loop and its gradient takes minutes,
    so the LSTM always trains as a plain TF graph."""
    return getattr(model, "architecture", None) != "lstm" and (steps is None or steps >= 300)


class Evaluator:
    """Mean next-token cross-entropy (nats) over a token sequence (a TF graph: forward only, run once)."""

    def __init__(self, model):
        @tf.function
        def step(x, y, w):
            ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x, training=False))
            return tf.reduce_sum(ce * w), tf.reduce_sum(w)

        self._step = step

    def __call__(self, ids, context_length, batch_size=32, max_batches=None):
        total, count = 0.0, 0.0
        for i, (x, y, w) in enumerate(eval_batches(ids, context_length, batch_size)):
            if max_batches is not None and i >= max_batches:
                break
            s, c = self._step(x, y, w)
            total += float(s)
            count += float(c)
        return total / max(count, 1.0), count


def train(model, train_ids, val_ids=None, *, context_length, steps=None, time_budget_s=None, batch_size=32,
          learning_rate=1e-3, warmup_steps=100, weight_decay=0.1, clipnorm=1.0, min_lr_ratio=0.1, seed=0,
          checkpoint_dir=None, checkpoint_every=250, eval_every=None, eval_max_batches=8, verbose=1,
          on_checkpoint=None, teacher=None, distill_temperature=1.0, distill_alpha=0.5):
    """Train ``model`` in place. Stops after ``steps`` or ``time_budget_s`` seconds, whichever comes
    first (at least one must be given). With ``teacher`` (a LanguageModel over the same token ids)
    the loss is ``distillation_loss``; the reported loss is always the plain next-token
    cross-entropy. Returns a history dict."""
    if steps is None and time_budget_s is None:
        raise ValueError("give steps or time_budget_s (or both)")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be a positive number or None, got {time_budget_s!r}")
    teacher_model = None
    if teacher is not None:
        teacher_model = check_teacher(teacher, model, context_length, distill_temperature, distill_alpha)
    started = time.perf_counter()
    total_guess = steps if steps is not None else 1_000_000
    schedule = WarmupCosine(learning_rate, warmup_steps, total_guess, min_lr_ratio)
    optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9, beta_2=0.99,
                                       global_clipnorm=clipnorm)
    optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "position_embedding"])
    model.build_weights()
    optimizer.build(model.trainable_variables)
    step_var = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    manager = None
    if checkpoint_dir is not None:
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step_var, total=schedule.total)
        manager = tf.train.CheckpointManager(ckpt, str(checkpoint_dir), max_to_keep=2)
        if manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint).expect_partial()
            if verbose:
                print(f"resumed from {manager.latest_checkpoint} at step {int(step_var.numpy())}")
    start_step = int(step_var.numpy())

    variables = model.trainable_variables

    @tf.function(jit_compile=use_xla(model, steps))
    def train_step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            if teacher_model is None:
                hard = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
                loss = tf.reduce_mean(hard)
            else:
                per_token, hard = distillation_loss(logits, teacher_model(x, training=False), y,
                                                    float(distill_temperature), float(distill_alpha))
                loss = tf.reduce_mean(per_token)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return tf.reduce_mean(hard)

    evaluator = Evaluator(model) if val_ids is not None and len(val_ids) > 1 else None
    history = {"step": [], "loss": [], "val_step": [], "val_loss": [], "tokens_per_s": None}
    data = iter(windows_dataset(train_ids, context_length, batch_size, seed + start_step))
    progbar = keras.utils.Progbar(steps, stateful_metrics=["tok/s", "val_loss"], verbose=verbose) if verbose else None
    tokens_per_step = batch_size * context_length
    step = start_step
    smooth = None
    t_measure = None
    while True:
        if steps is not None and step >= steps:
            break
        elapsed = time.perf_counter() - started
        if time_budget_s is not None and elapsed >= time_budget_s:
            break
        x, y = next(data)
        loss = float(train_step(x, y))
        step += 1
        step_var.assign(step)
        smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
        history["step"].append(step)
        history["loss"].append(loss)
        if step == start_step + 3:
            t_measure = (time.perf_counter(), step)  # after compilation
        rate = None
        if t_measure is not None and step > t_measure[1]:
            dt = time.perf_counter() - t_measure[0]
            rate = (step - t_measure[1]) / dt
            history["tokens_per_s"] = rate * tokens_per_step
            if time_budget_s is not None and step == t_measure[1] + 20:
                # now the step speed is known: aim the cosine schedule at the budget's last step
                remaining = time_budget_s - (time.perf_counter() - started)
                planned = step + int(remaining * rate * 0.97)
                if steps is not None:
                    planned = min(planned, steps)
                schedule.total.assign(float(max(planned, warmup_steps + 1)))
        values = [("loss", smooth)]
        if rate:
            values.append(("tok/s", rate * tokens_per_step))
        if evaluator is not None and eval_every and step % eval_every == 0:
            val, _ = evaluator(val_ids, context_length, batch_size, eval_max_batches)
            history["val_step"].append(step)
            history["val_loss"].append(val)
            values.append(("val_loss", val))
        if manager is not None and step % checkpoint_every == 0:
            manager.save(checkpoint_number=step)
            if on_checkpoint is not None:
                on_checkpoint(step)
        if progbar is not None:
            progbar.update(step if steps is not None else step, values)
    if manager is not None and step > start_step:
        manager.save(checkpoint_number=step)
    history["steps"] = step
    history["train_seconds"] = time.perf_counter() - started
    if evaluator is not None:
        val, count = evaluator(val_ids, context_length, batch_size)
        history["final_val_loss"] = val
        if verbose:
            print(f"\nvalidation loss {val:.4f} nats/token over {int(count)} tokens "
                  f"after {step} steps, {history['train_seconds']:.0f} s")
    return history
