"""Choose a Transformer's size for a wall-clock training budget on this machine.

The fp32 matrix-multiply rate available now is measured (one second), the training loop is
assumed to reach ``UTILISATION`` of it (benchmarks/lm_training.py measures the real fraction), and the
largest size whose token budget covers ``TOKENS_PER_PARAM`` tokens per parameter is chosen: a model
too large for the budget stays under-trained, one too small stops improving early.
"""
from __future__ import annotations

import time

# (layers, hidden, context), smallest to largest; heads = hidden // 32, ff = 4 x hidden
# (context 128 rather than 64 for the 4 x 128 model: it costs 8% more per token, and a longer
# context lowers the loss of every position an evaluation window holds)
SIZES = ((2, 64, 64), (3, 96, 64), (4, 128, 128), (6, 192, 128), (8, 256, 256))
TOKENS_PER_PARAM = 6
UTILISATION = 0.45  # measured: 4 x 128 at context 128 trains at 0.5 of the 512 x 512 rate (3 x 96 at 64: 0.35)
BATCH_SIZE = 16


def matmul_rate(n=512, seconds=1.0):
    """The fp32 matrix-multiply FLOP/s available now on the threads TensorFlow uses: products
    repeated for about ``seconds``, total work over total time. On a shared core that is the share
    training will get (20-minute runs at load 16-20: 4 x 128 reached 1.95 and 2.27 nats/char in 758
    and 433 steps; the 3 x 96 this rule chose reached 1.55 in 15,695 steps as the load fell to 7)."""
    from kerasllm._tf import tf

    a, b = tf.random.normal([n, n]), tf.random.normal([n, n])
    tf.matmul(a, b).numpy()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tf.matmul(a, b).numpy()
        count += 1
    return count * 2 * n ** 3 / (time.perf_counter() - start)


def size_config(layers, hidden, context, vocab_size):
    return {"layers": layers, "hidden": hidden, "heads": max(1, hidden // 32), "ff": 4 * hidden,
            "context_length": context, "vocab_size": vocab_size}


def matmul_params(cfg):
    """N of the standard 6N accounting: the matmul weights every token meets (qkv, proj, fc and out of
    every layer, the LM head tied to the token embedding); lookups, biases and LayerNorm left out."""
    h, f = cfg["hidden"], cfg["ff"]
    return cfg["layers"] * (h * 3 * h + h * h + 2 * h * f) + cfg["vocab_size"] * h


def flops_per_token(cfg):
    """Training FLOPs per token, PaLM's / nanoGPT's MFU accounting: 6N (forward 2N, backward 4N) + the
    attention scores and weighted values over the full square (12 x layers x context x hidden)."""
    return 6 * matmul_params(cfg) + 12 * cfg["layers"] * cfg["context_length"] * cfg["hidden"]


def plan(time_budget_s, vocab_size, rate=None):
    """A dict of Transformer hyperparameters (layers, hidden, heads, ff, context_length, batch_size)
    for ``time_budget_s`` seconds of training, and a sentence saying why."""
    rate = matmul_rate() if rate is None else rate
    chosen = size_config(*SIZES[0], vocab_size)
    tokens = 0.0
    for size in SIZES:
        cfg = size_config(*size, vocab_size)
        t = time_budget_s * rate * UTILISATION / flops_per_token(cfg)
        if t < TOKENS_PER_PARAM * matmul_params(cfg) and size != SIZES[0]:
            break
        chosen, tokens = cfg, t
    chosen.pop("vocab_size")
    chosen["batch_size"] = BATCH_SIZE
    why = (f"for {time_budget_s:g} s at {rate / 1e9:.0f} GFLOP/s measured: {chosen['layers']} layers x "
           f"{chosen['hidden']}, context {chosen['context_length']}, batch {BATCH_SIZE} "
           f"(about {tokens / 1e6:.1f}M training tokens expected)")
    return chosen, why
