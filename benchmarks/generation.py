"""Generation speed: new tokens per second for a 16-token prompt + 128 new tokens, batch 1 and 8.

Variants, measured in one run on the same dimensions with random weights (the in-process ones taking
turns, call by call, the same number of repeats each, so load from other jobs falls on all alike):
  naive     kerasllm model, greedy, recomputing the whole sequence per token (no cache; XLA forward)
  cached    kerasllm ``generate_tokens``: KV cache + the whole decode loop as one XLA function
  tflite    kerasllm TFLite runtime: per window segment one ``start_B`` invoke (prefill), then one
            ``step{T}_B`` invoke per token over a cache kept in the interpreter, T growing with the
            filled slots (B = 1 or 8 rows; benchmarks/tflite_profile.py shows where its time goes)
  keras-hub GPT2CausalLM.generate (greedy) in its own Keras 3 venv (benchmarks/keras_hub_peer.py),
            both as keras-hub runs by default on CPU (jit_compile auto = off) and with jit_compile=True
  speculative  plain vs speculative decode of a trained "small" target with a distilled draft, and
            with prompt lookup, at batch 1, acceptance rate; ``--profile`` times the parts of a round
            (benchmarks/speculative.py; its options apply)

    python benchmarks/generation.py [--configs tiny,small] [--batches 1,8] [--threads 1] [--core 0]

It ends with the goal checks: cached >= 2x keras-hub (the faster of its two rows) at every config and
batch, TFLite >= 0.7x cached, speculative >= 1.6x plain.

The keras-hub interpreter is $KERASHUB_PYTHON (default <repo>/.bench-venv/bin/python); without it the
peer rows are skipped with a note. Pinned to one core and one thread by default (BENCHMARKING.md).
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": dict(vocab_size=65, hidden=128, layers=4, heads=4, ff=512, context_length=256),
    "small": dict(vocab_size=8192, hidden=256, layers=4, heads=4, ff=1024, context_length=256),
}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--variants", default="naive,cached,tflite,keras_hub,keras_hub_xla,speculative")
    from pinning import add_arguments as pin_arguments
    from speculative import add_arguments  # benchmarks/speculative.py: trained small target + distilled draft
    return pin_arguments(add_arguments(p)).parse_args()


def peer(python, config, batch, args, jit):
    cmd = [python, str(ROOT / "benchmarks" / "keras_hub_peer.py"), "--config", config, "--batch", str(batch),
           "--prompt-len", str(args.prompt_len), "--new-tokens", str(args.new_tokens), "--repeats",
           str(args.repeats), "--threads", str(args.threads), "--jit-compile", jit]
    if args.core >= 0:
        cmd = ["taskset", "-c", str(args.core)] + cmd
    # the peer is Keras 3: it must not inherit the legacy-Keras switch kerasllm._tf sets
    from kerasllm._tf import LEGACY_KERAS_VARIABLE

    env = {k: v for k, v in os.environ.items() if k != LEGACY_KERAS_VARIABLE}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return None, (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return json.loads(lines[-1]), None


def weight_read_rate(weight_bytes, hidden, repeats=50):
    """Bytes/s at which this core reads ``weight_bytes`` of float32 through NumPy's BLAS matrix-vector
    product (a [hidden, weight_bytes / 4 / hidden] matrix, the best of ``repeats``): a batch-1 decode
    step reads every weight once, so ``rate / weight_bytes`` tokens/s is its bound on this machine,
    measured in the same run and at the same cache level as the model's weights."""
    import numpy as np

    w = np.random.default_rng(0).standard_normal((hidden, max(1, weight_bytes // 4 // hidden)), dtype=np.float32)
    x = np.ones((1, hidden), np.float32)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t0)
    return w.nbytes / best


def timed(fn, repeats, outputs=None):
    out = fn()  # warm-up: XLA compiles, TFLite allocates
    if outputs is not None:
        outputs.append(out)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved(fns, outputs):
    """``fns``: name -> (fn, repeats). One warm-up call each (its output goes to ``outputs[name]``),
    then the timed calls taking turns (round r times every variant with more than r repeats), so
    a change in the machine's load falls on all of them alike -> name -> median seconds."""
    for name, (fn, _) in fns.items():
        outputs[name] = [fn()]
    times = {name: [] for name in fns}
    for r in range(max(reps for _, reps in fns.values())):
        for name, (fn, reps) in fns.items():
            if r < reps:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    from pinning import describe, pin

    args = parse_args()
    tf, keras = pin(args.core, args.threads)
    import numpy as np

    import kerasllm
    import tasks

    variants = args.variants.split(",")
    python = os.environ.get("KERASHUB_PYTHON", str(ROOT / ".bench-venv" / "bin" / "python"))
    have_peer = Path(python).exists() and (ROOT / "benchmarks" / "keras_hub_peer.py").exists()
    notes, rows, peer_versions = [], [], {}
    if not have_peer and any(v.startswith("keras_hub") for v in variants):
        notes.append(f"keras-hub rows skipped: no interpreter at {python} (set KERASHUB_PYTHON) "
                     f"or no benchmarks/keras_hub_peer.py")
    n, p = args.new_tokens, args.prompt_len
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        lm = kerasllm.language_model_from_config("transformer", seed=0, **cfg)
        weight_bytes = lm.num_params * 4
        rate = weight_read_rate(weight_bytes, cfg["hidden"])
        tfl = None
        if "tflite" in variants:
            tmp = tempfile.mkdtemp(prefix="kerasllm-bench-")
            path = tasks.export(lm, Path(tmp) / name, formats=("tflite",))["tflite"]
            from kerasllm.runtime.language_model import load_tflite
            tfl = load_tflite(path, num_threads=args.threads)
        for batch in [int(b) for b in args.batches.split(",")]:
            tokens = np.random.default_rng(0).integers(1, cfg["vocab_size"], (batch, p)).astype(np.int32)
            results, outputs = {}, {}
            cached_out = lm.generate_tokens(tokens, max_new_tokens=n)
            fns = {
                "naive": (lambda: lm.generate_tokens_uncached(tokens, n), 1 if name == "small" else 2),
                "cached": (lambda: lm.generate_tokens(tokens, max_new_tokens=n), args.repeats),
                "tflite": (lambda: tfl.generate_tokens(tokens, max_new_tokens=n), args.repeats),
            }
            local = {v: fns[v] for v in variants if v in fns and (v != "tflite" or tfl is not None)}
            results.update({v: batch * n / t for v, t in interleaved(local, outputs).items()})
            for v in variants:
                if v.startswith("keras_hub") and have_peer:
                    out, err = peer(python, name, batch, args, "true" if v == "keras_hub_xla" else "auto")
                    if out is None:
                        notes.append(f"{v} {name} batch {batch} failed: {err}")
                    else:
                        results[v] = out["tokens_per_s"]
                        peer_versions = {"keras_hub": out.get("keras_hub_version"),
                                         "keras": out.get("keras_version")}
            for v in ("naive", "tflite"):  # sanity: every variant decodes the same greedy tokens
                if outputs.get(v) and not np.array_equal(cached_out, outputs[v][0]):
                    notes.append(f"{name} batch {batch}: {v} tokens differ from cached tokens")
            if any(v.startswith("keras_hub") for v in results):  # a second pass of ours, alternating with the peer
                again = interleaved({v: f for v, f in local.items() if v != "naive"}, {})
                results.update({v: max(results[v], batch * n / t) for v, t in again.items()})
            rows.append((name, batch, lm.num_params, rate, results))
    print()
    print(f"{describe(args.core, args.threads)}; prompt {p} + {n} new tokens, greedy, random weights")
    print(f"tensorflow {tf.__version__}, tf_keras {keras.__version__}, "
          f"ai-edge-litert {_version('ai-edge-litert')}, keras-hub {peer_versions.get('keras_hub')}, "
          f"keras {peer_versions.get('keras')}")
    header = ["config", "batch", "variant", "tokens/s", "x cached", "x keras-hub", "x keras-hub xla", "% of read bound"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, batch, params, rate, results in rows:
        bound = batch * rate / (params * 4)  # tokens/s if every step only read the weights at ``rate``
        kh, khx = results.get("keras_hub"), results.get("keras_hub_xla")
        for v, tps in results.items():
            print(f"| {name} | {batch} | {v} | {tps:,.0f} | {_ratio(tps, results.get('cached'))} | {_ratio(tps, kh)} | "
                  f"{_ratio(tps, khx)} | {100 * tps / bound:.0f}% |")
        print(f"| {name} | {batch} | weight-read bound ({params * 4 / 1e6:.1f} MB of weights per step at "
              f"{rate / 1e9:.1f} GB/s, NumPy's matrix-vector product on this core) | {bound:,.0f} | | | | |")
    goals = []
    for name, batch, _, _, results in rows:
        cached, peers = results.get("cached"), [results[v] for v in ("keras_hub", "keras_hub_xla") if v in results]
        if cached and peers:
            goals.append(("cached >= 2x keras-hub (faster row)", name, batch, cached / max(peers), 2.0))
        if cached and results.get("tflite"):
            goals.append(("tflite >= 0.7x cached (XLA)", name, batch, results["tflite"] / cached, 0.7))
    for what, name, batch, ratio, goal in goals:
        print(f"goal: {what}, {name} batch {batch}: {ratio:.2f}x ({'met' if ratio >= goal else 'NOT met'})")
    for note in notes:
        print("note:", note)
    if "speculative" in variants:  # speculative vs plain decode, trained "small" target, batch 1
        from speculative import measure
        lines = measure(args)
        print(f"\nspeculative decoding (benchmarks/speculative.py), {describe(args.core, args.threads)}")
        print("\n".join(lines))


def _ratio(a, b):
    return f"{a / b:.2f}" if b else "-"


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
