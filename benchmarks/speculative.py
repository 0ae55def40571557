"""Speculative vs plain decode, in one run, at batch 1 on one pinned core.

The "small" config target (subword vocab 8192, hidden 256, 4 layers, 4 heads, MLP 1024, context 256)
is trained for ``--target-time`` seconds on tiny Shakespeare; the draft (``--draft`` size, default
1 layer x 128) is distilled from it on the same text for ``--draft-time`` seconds
(``train_language_model(..., teacher=target)``). Both are saved under ``--cache`` and reused by later
runs with the same settings. Prompts: ``--prompts`` windows of ``--prompt-len`` tokens from the
validation text (the last 10%); each variant generates ``--new-tokens`` tokens for every prompt,
variants alternating, median of ``--repeats``. Greedy rows check that speculative tokens equal plain
tokens; sampled rows (temperature 1) print the acceptance rate.

    python benchmarks/speculative.py [--k 2,3,4] [--core 0] [--target-time 300] [--draft-time 120]

``benchmarks/generation.py`` runs this too (its ``speculative`` variant).
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data beside the checkout (a worktree under wt/ looks one level further up)
DATA = next((d / "shared" / "data" / "tinyshakespeare.txt" for d in (ROOT.parent, ROOT.parent.parent)
             if (d / "shared" / "data").is_dir()), ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
TARGET = dict(hidden=256, layers=4, heads=4, ff=1024)  # the "small" config of benchmarks/generation.py
DRAFTS = {"1x128": dict(hidden=128, layers=1, heads=2, ff=512), "1x64": dict(hidden=64, layers=1, heads=2, ff=256),
          "2x128": dict(hidden=128, layers=2, heads=2, ff=512)}


def add_arguments(p):
    g = p.add_argument_group("speculative decoding")
    g.add_argument("--data", default=str(DATA))
    # short enough for one benchmark run on a shared core (the pair is cached for later runs)
    g.add_argument("--target-time", type=float, default=300.0, help="seconds to train the target")
    g.add_argument("--draft-time", type=float, default=120.0, help="seconds to distil the draft")
    g.add_argument("--draft", default="1x128", choices=sorted(DRAFTS))
    g.add_argument("--k", default="2,3,4", help="numbers of speculative tokens to measure")
    g.add_argument("--prompts", type=int, default=4)
    g.add_argument("--spec-new-tokens", type=int, default=128)
    g.add_argument("--spec-prompt-len", type=int, default=16)
    g.add_argument("--spec-repeats", type=int, default=3)
    g.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "kerasllm-speculative-bench"),
                   help="folder for the trained target and draft (reused when present)")
    return p


def _trained(args):
    import json

    import kerasllm
    import tasks

    def load(folder):
        lm = kerasllm.load_language_model(folder)
        lm.history = json.loads((folder / "history.json").read_text())
        return lm

    def save(lm, folder):
        lm.save(folder)
        (folder / "history.json").write_text(json.dumps({"final_val_loss": lm.history.get("final_val_loss")}))

    tag = f"t{args.target_time:g}"
    target_dir = Path(args.cache) / f"target-{tag}"
    draft_dir = Path(args.cache) / f"draft-{args.draft}-{tag}-d{args.draft_time:g}"
    if (target_dir / "language_model.json").is_file():
        target = load(target_dir)
    else:
        target = tasks.train_language_model(Path(args.data), tokenizer="subword", vocab_size=8192, context_length=256,
                                            time_budget_s=args.target_time, seed=0, verbose=0, **TARGET)
        save(target, target_dir)
    if (draft_dir / "language_model.json").is_file():
        draft = load(draft_dir)
    else:
        draft = tasks.train_language_model(Path(args.data), teacher=target, time_budget_s=args.draft_time, seed=0,
                                           verbose=0, **DRAFTS[args.draft])
        save(draft, draft_dir)
    return target, draft


def measure(args):
    """Train (or load) the pair, time plain and speculative decode; returns printable table lines."""
    import numpy as np


    if not Path(args.data).is_file():
        raise SystemExit(f"--data: no file at {args.data} (tiny Shakespeare, from ../shared/data)")
    t0 = time.perf_counter()
    target, draft = _trained(args)
    setup_s = time.perf_counter() - t0
    text = Path(args.data).read_text(encoding="utf-8")
    val = text[int(len(text) * 0.9):]
    ids = target.tokenizer.encode(val[:20000])
    starts = np.linspace(0, len(ids) - args.spec_prompt_len - 1, args.prompts).astype(int)
    prompts = [np.asarray(ids[s:s + args.spec_prompt_len], np.int32)[None] for s in starts]
    n = args.spec_new_tokens
    ks = [int(k) for k in args.k.split(",")]
    specs = {k: target.with_draft(draft, num_speculative=k) for k in ks}
    lines, ratios = [], []
    for mode, temperature in (("greedy", 0.0), ("sampled T=1", 1.0)):
        def plain():
            return [target.generate_tokens(p, n, temperature=temperature, seed=0) for p in prompts]

        def speculative(k, stats=None):
            outs = []
            for p in prompts:
                outs.append(specs[k].generate_tokens(p, n, temperature=temperature, seed=0))
                if stats is not None:
                    stats.append(specs[k].stats)
            return outs

        runs = {"plain": plain, **{f"k={k}": (lambda k=k: speculative(k)) for k in ks}}
        reference = plain()
        stats = {k: [] for k in ks}
        same = {k: all(np.array_equal(r, o) for r, o in zip(reference, speculative(k, stats[k]))) for k in ks}
        times = {name: [] for name in runs}
        for _ in range(args.spec_repeats):  # alternate the variants: plain, k=.., plain, k=.., ...
            for name, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
        plain_tps = len(prompts) * n / statistics.median(times["plain"])
        lines.append(f"| {mode} | plain (target alone) | {plain_tps:,.0f} | 1.00 | | |")
        for k in ks:
            tps = len(prompts) * n / statistics.median(times[f"k={k}"])
            rate = sum(s["accepted"] for s in stats[k]) / sum(s["proposed"] for s in stats[k])
            per_round = sum(s["accepted"] + s["rounds"] for s in stats[k]) / sum(s["rounds"] for s in stats[k])
            check = ("identical to plain" if same[k] else "DIFFERENT from plain") if mode == "greedy" else ""
            if mode == "greedy":
                ratios.append(tps / plain_tps)
            lines.append(f"| {mode} | speculative k={k} | {tps:,.0f} | {tps / plain_tps:.2f} | {rate:.2f} "
                         f"({per_round:.2f} tokens/round) | {check} |")
    best = max(ratios)
    lines.append(f"goal: speculative greedy >= 1.6x plain at batch 1: best {best:.2f}x "
                 f"({'met' if best >= 1.6 else 'NOT met'})")
    val_loss = {name: m.history.get("final_val_loss") if m.history else None for name, m in
                (("target", target), ("draft", draft))}
    head = [f"training: target = 'small' config ({TARGET}, subword vocab 8192, context 256) trained "
            f"{args.target_time:g} s on {Path(args.data).name} (time_budget_s, seed 0); draft {args.draft} "
            f"({DRAFTS[args.draft]}) distilled from it for {args.draft_time:g} s "
            f"(train_language_model(text, teacher=target)); setup (train or load from {args.cache}) {setup_s:.0f} s",
            f"target: {target!r}, validation loss {_fmt(val_loss['target'])} nats/token; "
            f"draft: {draft.num_params:,} parameters, {_fmt(val_loss['draft'])} nats/token",
            f"batch 1, {len(prompts)} prompts of {args.spec_prompt_len} tokens from the validation text, "
            f"{n} new tokens each",
            "| mode | variant | tokens/s | x plain | acceptance rate | tokens |", "|---|---|---|---|---|---|"]
    return head + lines


def _fmt(x):
    return f"{x:.3f}" if isinstance(x, (int, float)) else "n/a (loaded)"


def main():
    from pinning import add_arguments as pin_arguments, describe, pin

    p = add_arguments(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    args = pin_arguments(p).parse_args()
    tf, keras = pin(args.core, args.threads)
    lines = measure(args)
    print()
    print(f"{describe(args.core, args.threads)}; tensorflow {tf.__version__}, tf_keras {keras.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
