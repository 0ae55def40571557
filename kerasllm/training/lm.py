"""Language-model training: AdamW with warm-up and cosine decay (aimed at the end of a step or time
budget), gradient clipping, resumable checkpoints, optional distillation from a teacher, and
data-parallel training under a ``tf.distribute`` strategy.

Speed: without a strategy, several whole training steps (window sampling, forward, backward,
optimizer) run as one XLA-compiled call, so Python, tf.data and dispatch cost nothing per step.
The windows of step ``i`` are drawn from ``(seed, i)`` alone, so a resumed run or a run under a
strategy sees exactly the batches a single uninterrupted run sees.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

from kerasllm._tf import keras, tf

CALL_SECONDS = 0.25  # aim for compiled calls this long: the clock and progress are checked between calls
MAX_STEPS_PER_CALL = 64


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


def window_offsets(seed, first_step, count, batch_size, n):
    """int32 [count, batch_size]: the start of every training window of steps first_step.. (uniform in [0, n))."""
    return np.stack([np.random.default_rng([seed, first_step + i]).integers(0, n, batch_size, dtype=np.int64)
                     for i in range(count)]).astype(np.int32)


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


GENERATION_PROMPT = 16  # tokens of the text each teacher continuation starts from
GENERATION_BATCH = 32


def teacher_generations(teacher, ids, tokens, length, seed=0, seconds=None):
    """About ``tokens`` tokens of the teacher's own continuations, as one int32 stream of rows of
    ``length`` tokens (a window of ``ids``, ``GENERATION_PROMPT`` tokens or half the row if shorter,
    and what the teacher generated after it). Batches alternate greedy and sampled (temperature 1)
    rows, the two ways the teacher decodes. Stops early once ``seconds`` have passed (after at
    least one batch).

    Why: a speculative-decoding draft is right when it predicts what the target *generates*, not
    the text: trained on the target's own outputs ("on-policy" distillation data; DistillSpec, Zhou
    et al. 2024; Agarwal et al. 2024), a 1x128 draft of the benchmark's "small" target went from
    0.36 / 0.25 / 0.20 to 0.83 / 0.88 / 0.80 greedy acceptance at k = 2/3/4 (benchmarks/speculative.py
    with ``--draft-generated 0`` and at its default)."""
    ids = np.asarray(ids, np.int32)
    if length < 2:
        raise ValueError(f"rows of {length} tokens leave nothing to generate after a prompt: need length >= 2")
    prompt = min(GENERATION_PROMPT, length // 2)  # a short context still gets continuations
    if len(ids) <= prompt:
        raise ValueError(f"the text has {len(ids)} tokens: too short to take {prompt}-token prompts from")
    rng = np.random.default_rng([seed, 0x6e6])
    started, rows = time.perf_counter(), []
    for batch in range(-(-max(1, int(tokens)) // (GENERATION_BATCH * length))):
        if rows and seconds is not None and time.perf_counter() - started >= seconds:
            break
        starts = rng.integers(0, len(ids) - prompt + 1, GENERATION_BATCH)
        prompts = np.stack([ids[s:s + prompt] for s in starts])
        rows.append(teacher.generate_tokens(prompts, length - prompt, temperature=float(batch % 2),
                                            seed=seed * 1000 + batch))
    return np.concatenate(rows).reshape(-1).astype(np.int32)


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


def _clock(seconds):
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """One status line for step- or time-bounded training: step (of the planned total), elapsed time,
    steps/s and tokens/s, the loss and an estimate of the time left. Rewritten in place on a terminal,
    printed every ``every_s`` seconds otherwise."""

    def __init__(self, verbose, steps=None, time_budget_s=None, every_s=10.0, stream=None):
        self.verbose, self.steps, self.budget, self.every_s = verbose, steps, time_budget_s, every_s
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_print = -math.inf
        self.line = self.printed = ""

    def line_for(self, step, elapsed, steps_per_s, tokens_per_s, loss, extra=""):
        left = []
        if steps_per_s and self.steps is not None:
            left.append(max(self.steps - step, 0) / steps_per_s)
        if self.budget is not None:
            left.append(max(self.budget - elapsed, 0))
        of = f"/{self.steps}" if self.steps is not None else ""
        rate = f"{steps_per_s:.1f} steps/s, {tokens_per_s / 1000:.1f}k tok/s" if steps_per_s else "compiling"
        eta = f", ~{_clock(min(left))} left" if left and steps_per_s else ""
        return f"step {step}{of}  {_clock(elapsed)} elapsed{eta}  {rate}  loss {loss:.4f}{extra}"

    def update(self, step, elapsed, steps_per_s, tokens_per_s, loss, extra="", force=False):
        if not self.verbose:
            return
        self.line = self.line_for(step, elapsed, steps_per_s, tokens_per_s, loss, extra)
        if self.tty:
            self.stream.write("\r" + self.line.ljust(100)[:160])
            self.stream.flush()
        elif force or elapsed - self.last_print >= self.every_s:
            self.stream.write(self.line + "\n")
            self.stream.flush()
            self.last_print, self.printed = elapsed, self.line

    def close(self):
        """End the line on a terminal; elsewhere print the final state if it was not printed."""
        if self.verbose and (self.tty or self.line != self.printed):
            self.stream.write(("\n" if self.tty else self.line + "\n"))
            self.stream.flush()


def use_xla(model, steps=None, time_budget_s=None):
    """XLA fuses the Transformer's element-wise work, but compiling costs seconds (tens on a busy
    machine), which pays off only over a few hundred steps or a few minutes. The LSTM trains as a
    plain TF graph: its training path compiles with XLA in seconds, but the graph ran slightly
    faster on CPU (benchmarks/lm_training.py, lstm_graph and lstm_xla rows)."""
    if getattr(model, "architecture", None) == "lstm":
        return False
    return (steps is None or steps >= 300) and (time_budget_s is None or time_budget_s >= 120)


def _checkpoint_dir(strategy, base):
    """Every worker must write a checkpoint (the save is collective); only the chief's is kept."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict() or (
            resolver.task_type in (None, "chief") or (resolver.task_type == "worker" and resolver.task_id == 0
                                                      and "chief" not in resolver.cluster_spec().as_dict())):
        return str(base), True
    return os.path.join(str(base), f".worker_{resolver.task_type}_{resolver.task_id}"), False


def train(model, train_ids, val_ids=None, *, context_length, steps=None, time_budget_s=None, batch_size=32,
          learning_rate=1e-3, warmup_steps=100, weight_decay=0.1, clipnorm=1.0, min_lr_ratio=0.1, seed=0,
          checkpoint_dir=None, checkpoint_every=250, eval_every=None, eval_max_batches=8, verbose=1,
          on_checkpoint=None, teacher=None, distill_temperature=1.0, distill_alpha=0.5, strategy=None,
          progress_every_s=10.0, target_val_loss=None):
    """Train ``model`` in place (built under ``strategy``'s scope when one is given). Stops after
    ``steps`` or ``time_budget_s`` seconds, whichever comes first (at least one must be given).
    With ``teacher`` (a LanguageModel over the same token ids) the loss is ``distillation_loss``;
    the reported loss is always the plain next-token cross-entropy. Returns a history dict."""
    from kerasllm import distribute

    if steps is None and time_budget_s is None:
        raise ValueError("give steps or time_budget_s (or both)")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive int or None, got {steps!r}")
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be a positive number or None, got {time_budget_s!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_windows = len(train_ids) - context_length - 1
    if n_windows < 1:
        raise ValueError(f"training text has {len(train_ids)} tokens: need more than context_length + 1 "
                         f"({context_length + 1}); use a shorter context_length or more text")
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    if batch_size % replicas:
        raise ValueError(f"batch_size {batch_size} must be a multiple of the strategy's {replicas} replicas")
    teacher_model = None
    if teacher is not None:
        teacher_model = check_teacher(teacher, model, context_length, distill_temperature, distill_alpha)
    started = time.perf_counter()

    with distribute.scope(strategy):
        schedule = WarmupCosine(learning_rate, warmup_steps, steps if steps is not None else 1_000_000, min_lr_ratio)
        optimizer = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=weight_decay, beta_1=0.9,
                                           beta_2=0.99, global_clipnorm=clipnorm)
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta", "position_embedding"])
        optimizer.build(model.trainable_variables)
    manager, keep_checkpoints = None, True
    if checkpoint_dir is not None:
        ckpt_dir, keep_checkpoints = _checkpoint_dir(strategy, checkpoint_dir)
        # the schedule's total is not saved: a resumed run aims at its own step or time budget
        ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
        manager = tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=2)
        latest = tf.train.latest_checkpoint(str(checkpoint_dir))
        if latest:
            ckpt.restore(latest).expect_partial()
            if verbose:
                print(f"resumed from {latest} at step {int(optimizer.iterations.numpy())}")
    start_step = int(optimizer.iterations.numpy())

    data = tf.constant(np.asarray(train_ids, np.int32))
    span = tf.range(context_length + 1)
    variables = model.trainable_variables
    tokens_per_step = batch_size * context_length
    alpha, temperature = float(distill_alpha), float(distill_temperature)

    def losses(offsets):
        """offsets [rows] -> (loss to minimise, mean next-token cross-entropy) over those windows."""
        windows = tf.gather(data, offsets[:, None] + span[None, :])
        x, y = windows[:, :-1], windows[:, 1:]
        logits = model(x, training=True)
        if teacher_model is None:
            hard = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
            per_token = hard
        else:
            per_token, hard = distillation_loss(logits, teacher_model(x, training=False), y, temperature, alpha)
        # a sum over this replica's rows divided by the global token count: summing the replicas'
        # gradients gives the global batch's mean gradient
        return tf.reduce_sum(per_token) / tokens_per_step, tf.reduce_sum(hard) / tokens_per_step

    if strategy is None:
        @tf.function(jit_compile=use_xla(model, steps, time_budget_s))
        def run(offsets, count):  # the first ``count`` rows of offsets: whole training steps in one call
            def body(i, total):
                with tf.GradientTape() as tape:
                    loss, hard = losses(offsets[i])
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return i + 1, total + hard

            # a plain while loop: with maximum_iterations (as `for i in tf.range`) XLA would
            # compile once per trip count
            _, total = tf.while_loop(lambda i, total: i < count, body, (tf.constant(0), tf.constant(0.0)))
            return total / tf.cast(count, tf.float32)
    else:
        per_replica = batch_size // replicas

        @tf.function(jit_compile=use_xla(model, steps, time_budget_s))
        def gradients(offsets):
            with tf.GradientTape() as tape:
                loss, hard = losses(offsets)
            return tape.gradient(loss, variables), hard

        def replica_step(offsets):
            rid = tf.distribute.get_replica_context().replica_id_in_sync_group
            grads, hard = gradients(offsets[0, rid * per_replica:(rid + 1) * per_replica])
            optimizer.apply_gradients(zip(grads, variables))  # sums the replicas' gradients, then clips
            return hard

        @tf.function
        def run(offsets, count):  # one step per call: the gradient all-reduce cannot sit inside a loop
            return strategy.reduce("SUM", strategy.run(replica_step, args=(offsets,)), axis=None)

    evaluator = Evaluator(model) if val_ids is not None and len(val_ids) > 1 else None
    history = {"step": [], "loss": [], "val_step": [], "val_loss": [], "tokens_per_s": None}
    progress = Progress(verbose, steps, time_budget_s, progress_every_s)
    step, per_call = start_step, 1
    measured = None  # (time, step) once compilation is over
    rate = None
    smooth = None
    reached = False
    while steps is None or step < steps:
        elapsed = time.perf_counter() - started
        if time_budget_s is not None and elapsed >= time_budget_s:
            break
        k = per_call if strategy is None else 1
        if steps is not None:
            k = min(k, steps - step)
        if time_budget_s is not None and rate:
            k = max(1, min(k, int((time_budget_s - elapsed) * rate)))
        # one array shape for every call, so the step compiles once
        offsets = np.zeros((MAX_STEPS_PER_CALL, batch_size), np.int32)
        offsets[:k] = window_offsets(seed, step, k, batch_size, n_windows)
        loss = float(run(tf.constant(offsets), tf.constant(k)))
        step += k
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss
        history["step"].append(step)
        history["loss"].append(loss)
        now = time.perf_counter()
        if len(history["step"]) == 1:
            history["compile_seconds"] = now - started  # (includes the first step)
        if measured is None and step - start_step >= 2:
            measured = (now, step)  # the first calls compile
        elif measured is not None and step > measured[1]:
            rate = (step - measured[1]) / (now - measured[0])
            history["tokens_per_s"] = rate * tokens_per_step
            per_call = int(min(MAX_STEPS_PER_CALL, max(1, rate * CALL_SECONDS)))
            if time_budget_s is not None and now - measured[0] > 2.0 and not history.get("planned_steps"):
                # the step speed is known: aim the cosine schedule at the budget's last step
                planned = step + int((time_budget_s - (now - started)) * rate * 0.98)
                if steps is not None:
                    planned = min(planned, steps)
                history["planned_steps"] = planned
                schedule.total.assign(float(max(planned, warmup_steps + 1)))
        extra = ""
        if evaluator is not None and eval_every and (step // eval_every) > ((step - k) // eval_every):
            val, _ = evaluator(val_ids, context_length, batch_size, eval_max_batches)
            history["val_step"].append(step)
            history["val_loss"].append(val)
            extra = f"  val_loss {val:.4f}"
            reached = target_val_loss is not None and val <= target_val_loss
        if manager is not None and (step // checkpoint_every) > ((step - k) // checkpoint_every):
            manager.save(checkpoint_number=step)
            if on_checkpoint is not None:
                on_checkpoint(step)
        progress.update(step, now - started, rate, (rate or 0) * tokens_per_step, smooth, extra, force=bool(extra))
        if reached:
            break
    progress.close()
    if manager is not None and step > start_step:
        manager.save(checkpoint_number=step)
    if manager is not None and not keep_checkpoints:
        tf.io.gfile.rmtree(manager.directory)
    history["steps"] = step
    history["reached_target"] = reached
    history["train_seconds"] = time.perf_counter() - started
    if evaluator is not None:
        val, count = evaluator(val_ids, context_length, batch_size)
        history["final_val_loss"] = val
        if verbose:
            print(f"validation loss {val:.4f} nats/token over {int(count)} tokens "
                  f"after {step} steps, {history['train_seconds']:.0f} s")
    return history
