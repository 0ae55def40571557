"""``kerasllm lm train|draft|generate|evaluate``: language models on the command line (thin: calls tasks)."""
from __future__ import annotations

import json


def add_language_model_commands(subparsers):
    """Add ``lm train``, ``lm draft``, ``lm generate`` and ``lm evaluate`` to the ``kerasllm`` command's subparsers.
    Each command's handler is ``args.run(args)`` and returns the exit code."""
    lm = subparsers.add_parser("lm", help="train a language model on your text, generate with it",
                               description="Character or subword Transformer/LSTM language models.")
    commands = lm.add_subparsers(dest="lm_command", metavar="{train,draft,generate,evaluate}")
    commands.required = True

    train = commands.add_parser("train", help="train on a text file; save and/or export the model")
    train.add_argument("--text", required=True, help="a UTF-8 text file")
    train.add_argument("--architecture", choices=("transformer", "lstm"), default="transformer")
    train.add_argument("--tokenizer", choices=("char", "subword"), default="char")
    train.add_argument("--context-length", type=int, default=None,
                       help="default: chosen for --seconds (alone), else 256")
    train.add_argument("--steps", type=int, default=None)
    train.add_argument("--seconds", type=float, default=None, help="wall-clock training budget")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--save", help="folder to save the trained model to (kerasllm.load_language_model)")
    train.add_argument("--out", help="export folder for serving, e.g. saved_models/shakespeare")
    train.add_argument("--checkpoint-dir", help="resume from / write training checkpoints here")
    train.add_argument("hparams", nargs="*", metavar="NAME=VALUE", help="e.g. hidden=256 learning_rate=1e-3")
    train.set_defaults(run=_train)

    draft = commands.add_parser("draft", help="train a small draft model for speculative decoding with --target")
    draft.add_argument("--target", required=True, help="the saved model the draft proposes tokens for")
    draft.add_argument("--text", required=True, help="a UTF-8 text file (the target's training text)")
    draft.add_argument("--seconds", type=float, default=120.0, help="wall-clock budget, generation included")
    draft.add_argument("--steps", type=int, default=None)
    draft.add_argument("--seed", type=int, default=0)
    draft.add_argument("--save", required=True, help="folder to save the draft to")
    draft.add_argument("hparams", nargs="*", metavar="NAME=VALUE",
                       help="e.g. hidden=64 distill_generated=0.5 (defaults: tasks.train_draft_model)")
    draft.set_defaults(run=_draft)

    gen = commands.add_parser("generate", help="continue prompts with a saved model or an export")
    gen.add_argument("--model", required=True, help="a saved model folder, an export folder or a .tflite file")
    gen.add_argument("prompts", nargs="+")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--stop", action="append", help="stop sequence, backslash escapes allowed (repeatable)")
    gen.add_argument("--stream", action="store_true", help="print text as it is produced (saved models)")
    gen.add_argument("--draft", help="a saved draft model (lm draft), or prompt_lookup: speculative decoding, "
                                     "the same output")
    gen.add_argument("--num-speculative", type=int, default=4, help="tokens the draft proposes per round")
    gen.add_argument("--draft-vocab", type=int, default=None,
                     help="the draft proposes only the first N token ids (a cheaper draft step)")
    gen.set_defaults(run=_generate)

    ev = commands.add_parser("evaluate", help="cross-entropy, perplexity and bits per character on a text file")
    ev.add_argument("--model", required=True, help="a saved model folder")
    ev.add_argument("--text", required=True)
    ev.set_defaults(run=_evaluate)
    return lm


def _parse_hparams(items):
    import ast

    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"hyperparameters are NAME=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _train(args):
    from pathlib import Path

    import tasks

    hp = _parse_hparams(args.hparams)
    if args.checkpoint_dir:
        hp["checkpoint_dir"] = args.checkpoint_dir
    lm = tasks.train_language_model(Path(args.text), architecture=args.architecture, tokenizer=args.tokenizer,
                                    context_length=args.context_length, steps=args.steps,
                                    time_budget_s=args.seconds, seed=args.seed, **hp)
    result = {"val_loss": lm.history.get("final_val_loss"), "steps": lm.history["steps"]}
    if args.save:
        result["saved"] = str(lm.save(args.save))
    if args.out:
        result["exported"] = str(tasks.export(lm, args.out)["version_dir"])
    print(json.dumps(result))


def _draft(args):
    from pathlib import Path

    import tasks
    from kerasllm.models.language_model import load_language_model

    target = load_language_model(args.target)
    draft = tasks.train_draft_model(target, Path(args.text), time_budget_s=args.seconds, steps=args.steps,
                                    seed=args.seed, **_parse_hparams(args.hparams))
    print(json.dumps({"val_loss": draft.history.get("final_val_loss"), "steps": draft.history["steps"],
                      "generated_tokens": draft.history.get("generated_tokens"), "saved": str(draft.save(args.save))}))


def _load(path):
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".tflite":
        from kerasllm.runtime.language_model import load_tflite

        return load_tflite(path)
    if (path / "language_model.json").is_file():
        from kerasllm.models.language_model import load_language_model

        return load_language_model(path)
    import kerasllm

    return kerasllm.load(path)


def _generate(args):
    import codecs

    model = _load(args.model)
    if args.draft:
        if not hasattr(model, "with_draft"):
            raise ValueError(f"--draft needs --model to be a saved model folder (lm train --save), not an export: "
                             f"{args.model}")
        from kerasllm.models.language_model import load_language_model

        draft = args.draft if args.draft == "prompt_lookup" else load_language_model(args.draft)
        model = model.with_draft(draft, num_speculative=args.num_speculative, draft_vocab=args.draft_vocab)
    stop = [codecs.decode(s, "unicode_escape") for s in args.stop] if args.stop else None  # "\n\n" from a shell
    kw = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
              top_p=args.top_p, seed=args.seed, stop=stop)
    if args.stream and hasattr(model, "stream"):
        for prompt in args.prompts:
            print(prompt, end="", flush=True)
            for piece in model.stream(prompt, **kw):
                print(piece, end="", flush=True)
            print()
        return
    for text in model.generate(list(args.prompts), **kw):
        print(text)


def _evaluate(args):
    from kerasllm.data import read_text
    from kerasllm.models.language_model import load_language_model

    print(json.dumps(load_language_model(args.model).evaluate(read_text(args.text))))
