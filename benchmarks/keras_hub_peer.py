"""keras-hub peer for the generation benchmark: GPT-2 greedy decode with random weights.

This script needs Keras 3 + keras-hub, which the project itself never imports (it stays on tf_keras), so it
runs ONLY in its own virtualenv, created once from the main repo root:

    python3 -m venv /work/main/.bench-venv && /work/main/.bench-venv/bin/pip install tensorflow==2.21.0 keras-hub

(`.bench-venv` is gitignored.) `benchmarks/generation.py` runs it as a subprocess, e.g.

    taskset -c 0 /work/main/.bench-venv/bin/python benchmarks/keras_hub_peer.py --config tiny --batch 1 --threads 1

and reads the single JSON line it prints on stdout (TF's logs go to stderr).

What is measured: `GPT2CausalLM(backbone, preprocessor=None)` compiled with `sampler="greedy"`, calling
`generate({"token_ids", "padding_mask"}, stop_token_ids=None)` on a batch whose rows hold `prompt_len` real
tokens followed by `new_tokens` padded slots; keras-hub fills every slot where `padding_mask` is False, so
each row gets exactly `new_tokens` new tokens. keras-hub seeds a KV cache with one forward pass over the
whole padded length, then runs a `while_loop` of one-token steps, all inside one `tf.function`. Its
`jit_compile` comes from `compile()`: `--jit-compile auto` (the default, what keras-hub users get) resolves
to False on a CPU-only machine (Keras 3 turns XLA off when no accelerator is present), so it runs as a plain
TF graph; `--jit-compile true` gives the XLA-compiled loop, about 2-2.5x faster for "tiny". The JSON line
reports which one ran. The first call traces (and compiles) the function (the warm-up); later calls with the
same shapes reuse it, which the script checks through the tf.function's tracing count.
"""

import argparse
import json
import os
import statistics
import sys
import time

CONFIGS = {
    "tiny": dict(vocabulary_size=65, hidden_dim=128, num_layers=4, num_heads=4, intermediate_dim=512,
                 max_sequence_length=256),
    "small": dict(vocabulary_size=8192, hidden_dim=256, num_layers=4, num_heads=4, intermediate_dim=1024,
                  max_sequence_length=256),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="TF intra/inter-op threads and OMP_NUM_THREADS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jit-compile", choices=("auto", "true", "false"), default="auto",
                   help="passed to compile(); 'auto' is Keras' default, which is False on a CPU-only machine")
    args = p.parse_args(argv)
    for name in ("batch", "prompt_len", "new_tokens", "repeats", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    max_len = CONFIGS[args.config]["max_sequence_length"]
    if args.prompt_len + args.new_tokens > max_len:
        p.error(f"--prompt-len + --new-tokens must be <= {max_len} (max_sequence_length of {args.config!r}), "
                f"got {args.prompt_len + args.new_tokens}")
    return args


def main(argv=None):
    args = parse_args(argv)
    # Threading must be fixed before TF is imported (OMP reads its env at load; TF's pools are created lazily
    # but refuse changes once initialised).
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    import keras_hub

    keras.utils.set_random_seed(args.seed)
    cfg = CONFIGS[args.config]
    backbone = keras_hub.models.GPT2Backbone(**cfg)
    lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    lm.compile(sampler="greedy", jit_compile=jit)

    b, p, n = args.batch, args.prompt_len, args.new_tokens
    rng = np.random.default_rng(args.seed)
    token_ids = np.zeros((b, p + n), dtype="int32")
    token_ids[:, :p] = rng.integers(1, cfg["vocabulary_size"], size=(b, p))
    padding_mask = np.zeros((b, p + n), dtype=bool)
    padding_mask[:, :p] = True
    inputs = {"token_ids": token_ids, "padding_mask": padding_mask}

    def run():
        return lm.generate(inputs, stop_token_ids=None)

    t0 = time.perf_counter()
    out = run()  # warm-up: traces and XLA-compiles the generate function
    warmup_s = time.perf_counter() - t0
    check_output(out, token_ids, b, p, n)
    # Greedy's first new token must be the argmax of a plain (cache-free) forward pass over the prompt.
    logits = lm({"token_ids": token_ids[:, :p], "padding_mask": padding_mask[:, :p]})
    first = np.argmax(keras.ops.convert_to_numpy(logits)[:, -1, :], axis=-1)
    if not np.array_equal(first, out["token_ids"][:, p]):
        sys.exit(f"first generated token {out['token_ids'][:, p]} != argmax of a forward pass {first}")

    gen_fn = lm.generate_function
    traces_before = gen_fn.experimental_get_tracing_count() if hasattr(gen_fn, "experimental_get_tracing_count") \
        else None
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
    check_output(out, token_ids, b, p, n)
    retraced = None
    if traces_before is not None:
        retraced = gen_fn.experimental_get_tracing_count() != traces_before

    median = statistics.median(times)
    print(json.dumps({
        "peer": "keras_hub",
        "config": args.config,
        "batch": b,
        "prompt_len": p,
        "new_tokens": n,
        "repeats": args.repeats,
        "seconds": median,
        "tokens_per_s": b * n / median,
        "warmup_seconds": warmup_s,
        "jit_compile_arg": args.jit_compile,
        "jit_compile": bool(lm.jit_compile),
        "retraced_after_warmup": retraced,
        "keras_hub_version": keras_hub.__version__,
        "keras_version": keras.__version__,
        "tensorflow_version": tf.__version__,
        "threads": args.threads,
    }))


def check_output(out, token_ids, b, p, n):
    """Fail loudly unless every row kept its prompt and got exactly n generated slots."""
    import numpy as np
    ids, mask = np.asarray(out["token_ids"]), np.asarray(out["padding_mask"])
    if ids.shape != (b, p + n) or mask.shape != (b, p + n):
        sys.exit(f"generate returned shapes {ids.shape}/{mask.shape}, expected {(b, p + n)}")
    if not mask.all():
        sys.exit(f"generate left {int((~mask).sum())} slots unfilled; expected all {b * (p + n)} filled")
    if not np.array_equal(ids[:, :p], token_ids[:, :p]):
        sys.exit("generate changed the prompt tokens")


if __name__ == "__main__":
    main()
