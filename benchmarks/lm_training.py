"""Language-model training throughput: tokens/s of ``train_language_model``'s training loop against a
plain tf_keras ``model.fit(jit_compile=True)`` of the same model, batch and optimizer, and against this
machine's fp32 matrix-multiply rate measured in the same run.

    python benchmarks/lm_training.py [--context-length N] [--batch-size B] [--steps S] [--rounds R] [--core C]

Variants, alternated in rounds (BENCHMARKING.md), each excluding its compilation:
  matmul       fp32 square products (512, 1024), the fastest of oneDNN (TF op) and XLA: the machine's rate
  kerasllm     kerasllm.training.lm.train (what train_language_model runs), API default model and batch
  fit          the same model compiled with model.compile(jit_compile=True) and trained with model.fit
  fit spe      the same with steps_per_execution=32 (matched: several steps per call, as kerasllm does)
  lstm         the default LSTM through kerasllm's loop, compiled as train_language_model compiles it
  lstm_graph   the same as a plain TF graph (no XLA)
  lstm_xla     the same, XLA-compiled

Model FLOPs per token = 6 x (matmul parameters, output head included) + 12 x layers x context x hidden
(attention scores and mixing, the full square as computed). Utilisation = model FLOP/s / matmul FLOP/s.
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse_args():
    from tasks.language_model import DEFAULT_CONTEXT, TRAIN_DEFAULTS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context-length", type=int, default=DEFAULT_CONTEXT)
    p.add_argument("--batch-size", type=int, default=TRAIN_DEFAULTS["batch_size"])
    p.add_argument("--seconds", type=float, default=20.0, help="timed training seconds per variant and round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--core", type=int, default=0, help="CPU core to pin to; -1: no pinning")
    p.add_argument("--variants", default="matmul,kerasllm,fit,fit_spe,lstm_graph,lstm_xla")
    return p.parse_args()


def transformer_flops_per_token(cfg, context):
    h, f, L = cfg["hidden"], cfg["ff"], cfg["layers"]
    matmul_params = L * (h * 3 * h + h * h + 2 * h * f) + cfg["vocab_size"] * h
    return 6 * matmul_params + 12 * L * context * h


def lstm_flops_per_token(cfg):
    h = cfg["hidden"]
    return 6 * (cfg["layers"] * 4 * 2 * h * h + h * cfg["vocab_size"])


def matmul_rate(tf, sizes=(512, 1024), repeats=5):
    """The machine's fp32 matmul rate: the fastest of ``repeats`` square products of each size, by
    oneDNN (TF op) and XLA, the best of all (a high reference, so the fractions below are not flattered)."""
    best = 0.0
    for n in sizes:
        a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
        for jit in (False, True):
            f = tf.function(lambda a, b: tf.matmul(a, b), jit_compile=jit)
            f(a, b).numpy()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                f(a, b).numpy()
                times.append(time.perf_counter() - t)
            best = max(best, 2 * n ** 3 / min(times))
    return best


def main():
    args = parse_args()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    from kerasllm._tf import keras, no_autotune, tf
    from kerasllm.models.language_model import build_model
    from kerasllm.training import lm as training
    from tasks.language_model import MODEL_DEFAULTS, TRAIN_DEFAULTS

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    S, B = args.context_length, args.batch_size
    vocab = 65
    cfg = {**{k: v for k, v in MODEL_DEFAULTS["transformer"].items()}, "vocab_size": vocab, "context_length": S}
    lstm_cfg = {**MODEL_DEFAULTS["lstm"], "vocab_size": vocab, "context_length": S}
    ids = np.random.default_rng(0).integers(0, vocab, 400_000).astype(np.int32)
    flops = transformer_flops_per_token(cfg, S)
    variants = args.variants.split(",")
    results = {v: [] for v in variants}
    compile_s = {}

    def ours(architecture, model_cfg, seconds, key):
        # the budget includes compiling: add the last compile time (a guess in the first round; a
        # budget too short to measure a rate after compiling is retried with the compile time seen)
        guess = compile_s.get(key, 30.0)
        while True:
            model = build_model(architecture, model_cfg, 0)
            h = training.train(model, ids, context_length=S, time_budget_s=seconds + 5 + 1.5 * guess, batch_size=B,
                               learning_rate=TRAIN_DEFAULTS["learning_rate"], warmup_steps=10, verbose=0)
            if h["tokens_per_s"]:
                return h["tokens_per_s"], h
            guess = 2 * max(guess, h["compile_seconds"])

    def fit(seconds, steps_per_execution):
        model = build_model("transformer", cfg, 0)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.1, beta_2=0.99, global_clipnorm=1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=True,
                      steps_per_execution=steps_per_execution)
        starts = np.random.default_rng(1).integers(0, len(ids) - S - 1, 4096)
        windows = np.stack([ids[s:s + S + 1] for s in starts])
        data = no_autotune(tf.data.Dataset.from_tensor_slices((windows[:, :-1], windows[:, 1:]))
                           .repeat().batch(B, drop_remainder=True).prefetch(2))
        t0 = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=2 * steps_per_execution, verbose=0)  # compile
        compiled = time.perf_counter() - t0
        step_s = (time.perf_counter() - t0) / (2 * steps_per_execution)
        n = max(steps_per_execution, int(seconds / max(step_s, 1e-3) / 4) // steps_per_execution
                * steps_per_execution)  # a first guess, refined below
        t = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=n, verbose=0)
        rate = n / (time.perf_counter() - t)
        n = max(steps_per_execution, int(rate * seconds) // steps_per_execution * steps_per_execution)
        t = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=n, verbose=0)
        return n * B * S / (time.perf_counter() - t), compiled

    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for v in variants:
            if v == "matmul":
                results[v].append(matmul_rate(tf))
            elif v == "kerasllm":
                rate, h = ours("transformer", cfg, args.seconds, v)
                results[v].append(rate)
                compile_s[v] = h.get("compile_seconds")
            elif v == "fit":
                rate, compile_s[v] = fit(args.seconds, 1)
                results[v].append(rate)
            elif v == "fit_spe":
                rate, compile_s[v] = fit(args.seconds, 32)
                results[v].append(rate)
            elif v in ("lstm", "lstm_graph", "lstm_xla"):
                default_rule = training.use_xla
                if v != "lstm":
                    training.use_xla = lambda model, steps=None, time_budget_s=None, jit=v == "lstm_xla": jit
                try:
                    rate, h = ours("lstm", lstm_cfg, args.seconds, v)
                finally:
                    training.use_xla = default_rule
                results[v].append(rate)
                compile_s[v] = h.get("compile_seconds")
            load.append(os.getloadavg()[0])
            print(f"round {r + 1} {v}: {results[v][-1]:,.0f}", flush=True)

    mm = statistics.median(results["matmul"]) if "matmul" in results else None
    print()
    print(f"context {S}, batch {B}, transformer {cfg['layers']} x {cfg['hidden']} (ff {cfg['ff']}), vocab {vocab}; "
          f"{flops / 1e6:.2f} MFLOP per trained token; LSTM {lstm_cfg['layers']} x {lstm_cfg['hidden']}")
    print(f"pinned to core {args.core}, 1 thread; load average during the run "
          f"{min(load):.1f}-{max(load):.1f}; {args.rounds} rounds, median")
    print(f"{'variant':<10} {'tokens/s':>10} {'GFLOP/s':>9} {'of matmul':>10} {'vs fit':>7} {'compile s':>10}")
    fit_rate = statistics.median(results["fit"]) if "fit" in results else None
    for v in variants:
        m = statistics.median(results[v])
        if v == "matmul":
            print(f"{'matmul':<10} {'':>10} {m / 1e9:>9.1f} {'1.00':>10}")
            continue
        f = lstm_flops_per_token(lstm_cfg) if v.startswith("lstm") else flops
        util = f"{m * f / mm:.2f}" if mm else ""
        ratio = f"{m / fit_rate:.2f}x" if fit_rate and not v.startswith("lstm") else ""
        c = compile_s.get(v)
        print(f"{v:<10} {m:>10,.0f} {m * f / 1e9:>9.1f} {util:>10} {ratio:>7} {c if c is None else round(c, 1)!s:>10}")
    print(f"TensorFlow {tf.__version__}, tf_keras {keras.__version__}")


if __name__ == "__main__":
    main()
