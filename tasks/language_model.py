"""Language-model task: train a character or subword Transformer/LSTM LM on your text."""
from __future__ import annotations

import json
import os
from pathlib import Path

# Defaults per architecture (documented in train_language_model); with only a time budget the
# Transformer's size, context and batch come from kerasllm.training.budget instead.
MODEL_DEFAULTS = {
    "transformer": {"hidden": 128, "layers": 4, "heads": 4, "ff": 512, "dropout": 0.0, "positions": "learned"},
    "lstm": {"hidden": 256, "layers": 2, "dropout": 0.0},
}
TRAIN_DEFAULTS = {"batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 50, "weight_decay": 0.1,
                  "clipnorm": 1.0, "min_lr_ratio": 0.1, "checkpoint_every": 250, "eval_every": None,
                  "eval_max_batches": 8, "distill_temperature": 1.0, "distill_alpha": 0.5,
                  "target_val_loss": None}
OTHER = {"vocab_size": 2048, "validation_fraction": 0.1, "checkpoint_dir": None, "verbose": 1,
         "distill_generated": 0.0}
# a speculative-decoding draft (train_draft_model): one narrow layer, half its text the target's own output
DRAFT_DEFAULTS = {"hidden": 128, "layers": 1, "heads": 2, "ff": 512, "distill_generated": 0.5}
DEFAULT_STEPS = 1000
DEFAULT_CONTEXT = 256


def _read(text_or_path):
    from kerasllm.data import read_text

    if isinstance(text_or_path, os.PathLike):
        return read_text(text_or_path)
    if not isinstance(text_or_path, str) or not text_or_path:
        raise TypeError(f"text_or_path must be a non-empty str (text or a file path) or a Path, "
                        f"got {type(text_or_path).__name__}")
    # os.path.isfile, not Path.is_file: a long one-line text is not a file name, not an OSError
    if "\n" not in text_or_path and len(text_or_path) < 4096 and os.path.isfile(text_or_path):
        return read_text(text_or_path)
    return text_or_path


def train_language_model(text_or_path, architecture="transformer", tokenizer="char", context_length=None, steps=None,
                         time_budget_s=None, seed=0, teacher=None, strategy=None, **hparams):
    """Train a language model on a text (or a UTF-8 file) and return a ``LanguageModel``.

    The last ``validation_fraction`` (10%) of the text is held out; the final validation loss is in
    ``lm.history["final_val_loss"]``. Training stops after ``steps`` or ``time_budget_s`` seconds,
    whichever comes first (1000 steps when neither is given). With ``checkpoint_dir`` a killed run
    resumes from its last checkpoint.

    With only ``time_budget_s`` (no ``steps``; Transformer, no teacher or strategy) the size is chosen
    for the budget on this machine (``kerasllm.training.budget.plan``: layers, hidden, heads, ff,
    context_length, batch_size), printed and kept in ``lm.history["plan"]``; what you set stays as set.
    ``context_length`` otherwise defaults to 256 (to the teacher's with ``teacher``).

    ``strategy``: None, "mirrored" (this machine's devices), "multi_worker" (the cluster in
    ``TF_CONFIG``) or a ``tf.distribute.Strategy``: the global ``batch_size`` is split over the replicas.

    hparams (defaults): model — transformer: hidden=128, layers=4, heads=4, ff=512, dropout=0.0,
    positions="learned" (or "rotary");
    lstm: hidden=256, layers=2, dropout=0.0. Training — batch_size=8, learning_rate=3e-3,
    warmup_steps=50, weight_decay=0.1, clipnorm=1.0, min_lr_ratio=0.1, checkpoint_dir=None,
    checkpoint_every=250, eval_every=None, eval_max_batches=8, target_val_loss=None (stop once a
    periodic validation loss reaches it; needs eval_every), verbose=1. Tokenizer — vocab_size=2048
    (subword only), validation_fraction=0.1.

    Distillation: with ``teacher`` (a trained ``LanguageModel``) the new model (the student: its size
    from the hparams above) uses the teacher's tokenizer and learns from the teacher's next-token
    distribution over the same windows of the text: loss = distill_alpha x cross-entropy with the text
    + (1 - distill_alpha) x T² x cross-entropy with the teacher's softmax at T = distill_temperature
    (defaults 0.5 and 1.0). ``context_length`` defaults to the teacher's; a longer one is an error.
    ``distill_generated`` (default 0; with a teacher only): that share of the training tokens is the
    teacher's own continuations of prompts from the text (half greedy, half sampled; generated first,
    within ``time_budget_s``: at most that share of it), so the student learns what the teacher
    *generates* — what a speculative-decoding draft must predict (see ``train_draft_model``).

    Tiny Shakespeare, the whole file, 20 minutes (benchmarks/shakespeare.py)::

        train_language_model("../shared/data/tinyshakespeare.txt", time_budget_s=1200)
    """
    if architecture not in MODEL_DEFAULTS:
        raise ValueError(f"architecture must be 'transformer' or 'lstm', got {architecture!r}")
    if tokenizer not in ("char", "subword"):
        raise ValueError(f"tokenizer must be 'char' or 'subword', got {tokenizer!r}")
    if teacher is not None and not (hasattr(teacher, "model") and hasattr(teacher, "context_length")):
        raise TypeError(f"teacher must be a trained LanguageModel, got {type(teacher).__name__}")
    context_given = context_length
    if context_length is None:
        context_length = teacher.context_length if teacher is not None else DEFAULT_CONTEXT
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2, got {context_length!r}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    known = {**MODEL_DEFAULTS[architecture], **TRAIN_DEFAULTS, **OTHER}
    unknown = sorted(set(hparams) - set(known))
    if unknown:
        raise TypeError(f"unknown hyperparameters {unknown} for architecture {architecture!r}; "
                        f"expected some of {sorted(known)}")
    hp = {**known, **hparams}
    # only a time budget: choose the size for it (what the user set stays as set)
    plan_sizes = (time_budget_s is not None and steps is None and architecture == "transformer" and teacher is None
                  and strategy is None)
    if steps is None and time_budget_s is None:
        steps = DEFAULT_STEPS
    frac = hp["validation_fraction"]
    if not 0 <= frac < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {frac!r}")
    generated = hp["distill_generated"]
    if isinstance(generated, bool) or not isinstance(generated, (int, float)) or not 0 <= generated < 1:
        raise ValueError(f"distill_generated must be a share in [0, 1), got {generated!r}")
    if generated and teacher is None:
        raise ValueError("distill_generated needs a teacher: it is the share of the teacher's own generations")

    text = _read(text_or_path)
    split = int(len(text) * (1 - frac))
    train_text, val_text = text[:split], text[split:]

    from kerasllm.models.language_model import LanguageModel, build_model
    from kerasllm.text.char import CharTokenizer
    from kerasllm.text.subword import SubwordTokenizer, tokenizer_from_config
    from kerasllm.training.lm import train

    ckpt_dir = hp["checkpoint_dir"]
    saved_tok = Path(ckpt_dir) / "tokenizer.json" if ckpt_dir else None
    if teacher is not None:  # the student predicts the teacher's token ids
        if getattr(teacher, "tokenizer", None) is None:
            raise ValueError("teacher must be a LanguageModel with a tokenizer (as trained or loaded)")
        tok = teacher.tokenizer
    elif saved_tok is not None and saved_tok.is_file():  # resuming: the ids must not change
        tok = tokenizer_from_config(json.loads(saved_tok.read_text(encoding="utf-8")))
    else:
        tok = CharTokenizer().fit(train_text) if tokenizer == "char" else \
            SubwordTokenizer(hp["vocab_size"]).fit(train_text)
        if saved_tok is not None:
            saved_tok.parent.mkdir(parents=True, exist_ok=True)
            saved_tok.write_text(json.dumps(tok.get_config(), ensure_ascii=False), encoding="utf-8")
    encode = getattr(tok, "encode_long", tok.encode)
    train_ids = encode(train_text)
    val_ids = encode(val_text) if val_text else None

    if generated:
        import time

        import numpy as np

        from kerasllm.training.lm import teacher_generations

        started = time.perf_counter()
        own = teacher_generations(teacher, train_ids, len(train_ids) * generated / (1 - generated), context_length,
                                  seed, None if time_budget_s is None else time_budget_s * generated)
        spent = time.perf_counter() - started
        if hp["verbose"]:
            print(f"distillation data: {len(own):,} tokens of the teacher's own continuations (greedy and T=1) "
                  f"in {spent:.0f} s, beside {len(train_ids):,} of the text")
        train_ids = np.concatenate([np.asarray(train_ids, np.int32), own])
        if time_budget_s is not None:
            time_budget_s = max(1.0, time_budget_s - spent)
    plan_note = None
    if plan_sizes:
        from kerasllm.training.budget import plan

        chosen, plan_note = plan(time_budget_s, tok.vocab_size)
        sized = {"hidden", "layers", "heads", "ff"}
        for key, value in chosen.items():
            if key == "context_length":
                if context_given is None:  # (a short text caps it)
                    context_length = max(2, min(value, (len(train_ids) - 2) // 2))
            elif key not in hparams and not (key in sized and sized & set(hparams)):
                hp[key] = value
        if hp["verbose"]:
            print(f"time budget plan {plan_note}; set any of these to override")
    model_cfg = {k: hp[k] for k in MODEL_DEFAULTS[architecture]}
    model_cfg.update(vocab_size=tok.vocab_size, context_length=context_length)
    from kerasllm import distribute

    strategy = distribute.get_strategy(strategy)
    with distribute.scope(strategy):
        model = build_model(architecture, model_cfg, seed)
    if hp["verbose"]:
        print(f"{architecture} LM, {model.config.num_params:,} parameters, {tokenizer} tokenizer "
              f"(vocab {tok.vocab_size}), {len(train_ids):,} training tokens")
    history = train(model, train_ids, val_ids, context_length=context_length, steps=steps,
                    time_budget_s=time_budget_s, seed=seed, checkpoint_dir=ckpt_dir, teacher=teacher,
                    strategy=strategy,
                    **{k: hp[k] for k in TRAIN_DEFAULTS}, verbose=hp["verbose"])
    lm = LanguageModel(model, tok)
    history["plan"] = plan_note
    history["config"] = {**model_cfg, "batch_size": hp["batch_size"]}
    if generated:
        history["generated_tokens"] = len(own)
    lm.history = history
    return lm


def train_draft_model(target, text_or_path, time_budget_s=120, steps=None, seed=0, **hparams):
    """A draft for speculative decoding (``target.with_draft(draft, ...)``): a small Transformer
    distilled from ``target`` on ``text_or_path`` and on the target's own generations.

    Defaults (``DRAFT_DEFAULTS``; any ``train_language_model`` hparam overrides them): 1 layer,
    hidden 128, 2 heads, MLP 512, ``distill_generated=0.5`` (half the training tokens are the
    target's continuations, generated within the budget). Training on what the target generates,
    not only on the text, is what makes the target accept the draft's proposals."""
    return train_language_model(text_or_path, teacher=target, time_budget_s=time_budget_s, steps=steps, seed=seed,
                                **{**DRAFT_DEFAULTS, **hparams})
