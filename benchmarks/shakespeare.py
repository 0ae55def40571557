"""Train the character Transformer on the whole of tiny Shakespeare as a user would: the API defaults
and only a time budget (the model holds out the last 10% itself, the standard validation split, and
chooses its size for the budget), then report the loss on that last 10% in nats per character.

    taskset -c 1 python benchmarks/shakespeare.py [--time-budget 1200] [--context-length N] [--save DIR] [hparam=value ...]

Pin it to one core (taskset) for the one-core figure; it prints the load average before and after.
Peer: nanoGPT's CPU recipe (4 layers x 128, context 64, batch 12, one thread) reaches 1.59 after
18 minutes on one core of this machine (issue 12).
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
    shared = next((p for p in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if p.is_dir()), ROOT.parent / "shared")
    parser.add_argument("--data", type=Path, default=shared / "data" / "tinyshakespeare.txt")
    parser.add_argument("--time-budget", type=float, default=1200.0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--architecture", default="transformer")
    parser.add_argument("--context-length", type=int, default=None, help="default: chosen for the budget")
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
    import os

    import tasks
    from kerasllm._tf import tf

    tf.config.threading.set_intra_op_parallelism_threads(len(os.sched_getaffinity(0)))
    tf.config.threading.set_inter_op_parallelism_threads(1)
    load_before = os.getloadavg()
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
                      "hparams": hparams, "config": h.get("config"), "plan": h.get("plan"),
                      "cores": sorted(os.sched_getaffinity(0)), "load_before": load_before,
                      "load_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
