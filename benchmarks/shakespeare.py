"""Train the character Transformer on tiny Shakespeare (first 90% train, last 10% validation)
within a wall-clock budget and report the validation loss in nats per character.

    python benchmarks/shakespeare.py --time-budget 1140 --context-length 128 [--save DIR] [hparam=value ...]

Measured (library defaults, context 128, 2 shared cores): 1.5436 nats/char after 1140 s (15,868 steps,
14.4k tok/s); 1.6104 on a busier machine (5,552 steps).
"""
import argparse
import ast
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--time-budget", type=float, default=1140.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--architecture", default="transformer")
    parser.add_argument("--context-length", type=int, default=128)
    parser.add_argument("--save", default=None, help="save the trained model to this folder")
    parser.add_argument("hparams", nargs="*", help="extra hyperparameters, e.g. hidden=256 learning_rate=1e-3")
    args = parser.parse_args()
    hparams = {}
    for item in args.hparams:
        key, value = item.split("=", 1)
        try:
            hparams[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            hparams[key] = value
    import tasks

    started = time.time()
    lm = tasks.train_language_model(args.data, architecture=args.architecture, tokenizer="char",
                                    context_length=args.context_length, steps=args.steps,
                                    time_budget_s=args.time_budget, **hparams)
    h = lm.history
    if args.save:
        lm.save(args.save)
    print(lm.generate("ROMEO:", max_new_tokens=200))
    print(json.dumps({"val_loss_nats_per_char": round(h["final_val_loss"], 4), "steps": h["steps"],
                      "train_seconds": round(h["train_seconds"], 1), "total_seconds": round(time.time() - started, 1),
                      "train_tokens_per_s": round(h["tokens_per_s"] or 0), "params": lm.num_params,
                      "hparams": hparams, "context_length": args.context_length}))


if __name__ == "__main__":
    main()
