"""Language-model training throughput: tokens/s of ``train_language_model``'s training loop against a
plain tf_keras ``model.fit(jit_compile=True)`` of the same model, batch and optimizer, and against this
machine's fp32 matrix-multiply rate measured in the same run.

    python benchmarks/lm_training.py [--context-length N] [--batch-size B] [--steps S] [--rounds R] [--core C]

Variants, alternated in rounds (BENCHMARKING.md), each excluding its compilation:
  matmul       fp32 square products (512, 1024), the fastest of oneDNN (TF op) and XLA: the machine's rate
  kerasllm     kerasllm.training.lm.train (what train_language_model runs), API default model and batch,
               XLA-compiled as at train_language_model's default step count
  fit          the same model compiled with model.compile(jit_compile=True) and trained with model.fit
  fit spe      the same with steps_per_execution=32 (matched: several steps per call, as kerasllm does)
  lstm         the default LSTM through kerasllm's loop, compiled as train_language_model compiles it
  lstm_graph   the same as a plain TF graph (no XLA)
  lstm_xla     the same, XLA-compiled

Accounting (the standard one: PaLM appendix B, nanoGPT's estimate_mfu): model FLOPs per trained token
= 6N + 12·L·T·d, forward (2x) plus backward (4x) of every matmul weight; N = the matmul weights (qkv,
proj, fc, out of every layer and the LM head vocab x hidden, which is tied to the token embedding),
the embedding lookup, biases and LayerNorm excluded; 12·L·T·d = the attention scores and the weighted
values over the full T x T square. Utilisation = model FLOP/s / the matmul reference, the fastest
single 512 or 1024 fp32 product of the round (a peak: on a shared core the training rate, an average
over seconds, loses its share of the core while a single product may not).

    python benchmarks/lm_training.py --profile     per-op profile of kerasllm's compiled training call
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
    p.add_argument("--profile", action="store_true",
                   help="instead: time every XLA operation of kerasllm's compiled training call, grouped by kind")
    return p.parse_args()


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


# --- per-op profile of one compiled training call ---------------------------------------------
PROFILE_CATEGORIES = (  # (category, words in the TF op name the HLO instruction came from), first match wins
    ("optimizer (AdamW, clipping)", ("AdamW", "global_norm", "clip")),
    ("loss over vocab (softmax cross-entropy)", ("SparseSoftmaxCrossEntropy",)),
    ("attention softmax + causal mask", ("Softmax", "SelectV2", "/mul")),
    ("LayerNorm", ("/ln1/", "/ln2/", "/ln_f/", "moments", "batchnorm")),
    ("GELU", ("Gelu",)),
    ("bias add / bias gradient", ("BiasAdd",)),
    ("embedding gather / gradient scatter", ("embedding", "Gather", "Unsorted", "Scatter")),
    ("head split/merge transposes", ("transpose", "Reshape")),
    ("residual adds, gradient sums", ("AddN", "add")),
)


def xla_profile(train_once, dump_dir, trace_dir):
    """Run ``train_once()`` under the TF profiler with XLA:CPU per-operation trace events and
    return {(category, shape note): seconds} for the instructions of the compiled training call
    (the largest dumped module). XLA_FLAGS must have been set before TensorFlow was imported."""
    import collections
    import glob
    import re

    from kerasllm._tf import tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    tf.profiler.experimental.start(trace_dir)
    try:
        train_once()
    finally:
        tf.profiler.experimental.stop()
    module = max(glob.glob(f"{dump_dir}/*run*cpu_after_optimizations.txt"), key=os.path.getsize)
    instructions = {}
    for line in open(module):
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w-]+)\(", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            opcode = "dot" if m.group(3) == "dot" or "matmul" in line.lower() and m.group(3) == "custom-call" \
                else m.group(3)
            instructions.setdefault(m.group(1), (m.group(2), opcode, op.group(1) if op else ""))
    times = collections.Counter()
    space = xplane_pb2.XSpace()
    space.ParseFromString(open(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0], "rb").read())
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                inst = instructions.get(names.get(ev.metadata_id))
                if inst is None:
                    continue
                shape, opcode, op_name = inst
                if opcode == "dot":  # rank 3 (batch x heads first): attention
                    batched = shape.split("{")[0].count(",") >= 2
                    key = ("matmul: attention scores and mixing (per head)" if batched
                           else "matmul: dense layers and LM head", "")
                else:
                    key = next(((c, "") for c, words in PROFILE_CATEGORIES if any(w in op_name for w in words)),
                               ("other (copies, layout, loop)", ""))
                times[key] += ev.duration_ps / 1e12
    return times


def main():
    args = parse_args()
    if args.profile:
        import tempfile

        work = tempfile.mkdtemp(prefix="lm_training_profile_")
        # per-operation trace events, and the optimized HLO to name them (before TensorFlow is imported)
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true "
                                   f"--xla_dump_to={work}/hlo --xla_dump_hlo_as_text").strip()
    if args.core >= 0:
        os.sched_setaffinity(0, {args.core})
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np

    from kerasllm._tf import keras, no_autotune, tf
    from kerasllm.models.language_model import build_model
    from kerasllm.training import lm as training
    from kerasllm.training.budget import flops_per_token, matmul_params
    from tasks.language_model import DEFAULT_STEPS, MODEL_DEFAULTS, TRAIN_DEFAULTS

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    S, B = args.context_length, args.batch_size
    vocab = 65
    cfg = {**{k: v for k, v in MODEL_DEFAULTS["transformer"].items()}, "vocab_size": vocab, "context_length": S}
    lstm_cfg = {**MODEL_DEFAULTS["lstm"], "vocab_size": vocab, "context_length": S}
    ids = np.random.default_rng(0).integers(0, vocab, 400_000).astype(np.int32)
    flops = flops_per_token(cfg)  # the budget planner's accounting: one place
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

    if args.profile:
        default_rule = training.use_xla
        training.use_xla = lambda model, steps=None, time_budget_s=None: default_rule(model, DEFAULT_STEPS)
        steps = 200
        model = build_model("transformer", cfg, 0)
        out = {}
        load0 = os.getloadavg()[0]
        times = xla_profile(lambda: out.update(training.train(
            model, ids, context_length=S, steps=steps, batch_size=B, learning_rate=TRAIN_DEFAULTS["learning_rate"],
            warmup_steps=10, verbose=0)), f"{work}/hlo", f"{work}/trace")
        peak = matmul_rate(tf)
        total = sum(times.values())
        matmul_s = sum(t for (c, _), t in times.items() if c.startswith("matmul"))
        print(f"\nper-op profile of kerasllm's XLA training call: {steps} steps of {B} x {S} tokens, "
              f"pinned to core {args.core}, load {load0:.1f}-{os.getloadavg()[0]:.1f}")
        print(f"{'kind':<48} {'seconds':>8} {'share':>6}")
        for (c, _), t in sorted(times.items(), key=lambda kv: -kv[1]):
            print(f"{c:<48} {t:>8.2f} {t / total:>6.1%}")
        print(f"{'total (all XLA operations)':<48} {total:>8.2f}")
        print(f"model FLOPs (6N + 12LTd, all of them matmuls) / matmul time: {steps * B * S * flops / matmul_s / 1e9:.1f} "
              f"GFLOP/s inside the matmuls = {steps * B * S * flops / matmul_s / peak:.2f} of the peak product rate "
              f"({peak / 1e9:.1f} GFLOP/s); whole call {steps * B * S * flops / total / peak:.2f}")
        print(f"TensorFlow {tf.__version__}; XLA_FLAGS={os.environ['XLA_FLAGS']}")
        return
    load = [os.getloadavg()[0]]
    for r in range(args.rounds):
        for v in variants:
            if v == "matmul":
                results[v].append(matmul_rate(tf))
            elif v == "kerasllm":
                # XLA as train_language_model's default (steps=DEFAULT_STEPS) compiles it: the short
                # time budgets here would otherwise select the plain-graph path
                default_rule = training.use_xla
                training.use_xla = lambda model, steps=None, time_budget_s=None: default_rule(model, DEFAULT_STEPS)
                try:
                    rate, h = ours("transformer", cfg, args.seconds, v)
                finally:
                    training.use_xla = default_rule
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
          f"{flops / 1e6:.2f} MFLOP per trained token (6N + 12LTd, N = {matmul_params(cfg):,} matmul weights "
          f"incl. the tied LM head); LSTM {lstm_cfg['layers']} x {lstm_cfg['hidden']}")
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
