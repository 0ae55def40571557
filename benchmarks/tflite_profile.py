"""Where TFLite decode time goes, per decode step (microseconds, median of repeats, one run):

  xla            the XLA loop (``lm.generate_tokens``): (t(n=129) - t(n=2)) / 127
  tflite         the exported model (``load_tflite``): the same difference; one ``step{T}_{B}``
                 invoke per token plus the NumPy pick and the write of the step's new keys/values
  step           one invoke of ``step{T}_{B}`` alone (static shapes; XNNPACK runs its matmuls)
  step noxnn     the same without the default XNNPACK delegate
  while          the design this replaced: the sampler's decode loop as a TFLite WHILE op
                 (``Sampler.resume``, greedy), (t(32 steps) - t(1 step)) / 31
  while+sort     the same loop with ``AnySampler`` (greedy chosen at run time: it still sorts the
                 vocabulary every step, as the old ``generate_B`` signatures did)

    python benchmarks/tflite_profile.py [--configs tiny,small] [--batches 1,8] [--core 1]
"""
import argparse
import tempfile
from pathlib import Path

from generation import timed as median_time  # one warm-up, then the median of timed calls


def while_model(lm, batch, cache_len, sampler):
    """The replaced design: ``sampler.resume`` (a tf.while_loop -> TFLite WHILE) over a cache."""
    from kerasllm._tf import tf
    from kerasllm.export.lm import _flat, _nest
    from kerasllm.export.tflite import convert

    model = lm.model
    specs = [tf.TensorSpec([batch], tf.int32, name="token"), tf.TensorSpec([], tf.int32, name="count"),
             tf.TensorSpec([], tf.float32, name="temperature")] + [
        tf.TensorSpec(t.shape, tf.float32, name=f"cache_{i}")
        for i, t in enumerate(_flat(model.init_cache(batch, cache_len)))]

    @tf.function(input_signature=specs)
    def loop(token, count, temperature, *cache):
        out, _, _ = sampler.resume(model, token, _nest(list(cache)), 16, tf.zeros([batch], tf.int32), count, 0, 0,
                                   (temperature, tf.constant(0), tf.constant(1.0)), tf.zeros([batch, 33], tf.int32))
        return {"new_tokens": out}

    return convert([loop.get_concrete_function()], model)


def main():
    from pinning import add_arguments, describe, pin

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default="tiny,small")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=5)
    args = add_arguments(p, core=1).parse_args()
    tf, _ = pin(args.core, args.threads)
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    import kerasllm
    import tasks
    from generation import CONFIGS
    from kerasllm.generation.samplers import AnySampler, Greedy
    from kerasllm.generation.window import cache_slots
    from kerasllm.runtime.language_model import load_tflite

    rows = []
    for name in args.configs.split(","):
        cfg = CONFIGS[name]
        lm = kerasllm.language_model_from_config("transformer", seed=0, **cfg)
        path = tasks.export(lm, Path(tempfile.mkdtemp()) / name, formats=("tflite",))["tflite"]
        tfl = load_tflite(path, num_threads=args.threads)
        flat = Path(path).read_bytes()
        for batch in [int(b) for b in args.batches.split(",")]:
            tokens = np.random.default_rng(0).integers(1, cfg["vocab_size"], (batch, 16)).astype(np.int32)
            us = {}
            for label, fn in (("xla", lm.generate_tokens), ("tflite", tfl.generate_tokens)):
                t_long = median_time(lambda: fn(tokens, max_new_tokens=129), args.repeats)
                t_short = median_time(lambda: fn(tokens, max_new_tokens=2), args.repeats)
                us[label] = 1e6 * (t_long - t_short) / 127
            length = min(n for n in tfl.config["step_lengths"] if n >= cache_slots(16, 128))
            key = f"step{length}_{batch}"
            for label, resolver in (("step", OpResolverType.AUTO),
                                    ("step noxnn", OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)):
                it = Interpreter(model_content=flat, num_threads=args.threads, experimental_op_resolver_type=resolver)
                runner = it.get_signature_runner(key)
                inputs = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()}
                inputs["index"] = np.int32(20)
                runner(**inputs)  # allocates and sets the inputs; then invoke alone
                sub = it._interpreter.GetSubgraphIndexFromSignature(key)
                us[label] = 1e6 * median_time(lambda: [it._interpreter.Invoke(sub) for _ in range(10)],
                                              args.repeats) / 10
            for label, sampler in (("while", Greedy()), ("while+sort", AnySampler())):
                it = Interpreter(model_content=while_model(lm, batch, length, sampler), num_threads=args.threads)
                runner = it.get_signature_runner()
                inputs = {k: np.zeros(d["shape"], d["dtype"]) for k, d in runner.get_input_details().items()
                          if k != "count"}
                t = {c: median_time(lambda c=c: runner(**inputs, count=np.int32(c)), args.repeats) for c in (1, 32)}
                us[label] = 1e6 * (t[32] - t[1]) / 31
            rows.append((name, batch, length, us))
            print(name, batch, {k: round(v) for k, v in us.items()}, flush=True)
    print()
    print(f"{describe(args.core, args.threads)}; microseconds per decode step (median of {args.repeats}); "
          f"prompt 16, cache length T of the step signature")
    labels = list(rows[0][3])
    print("| config | batch | T | " + " | ".join(labels) + " | tflite / xla speed |")
    print("|" + "---|" * (len(labels) + 4))
    for name, batch, length, us in rows:
        print(f"| {name} | {batch} | {length} | " + " | ".join(f"{us[k]:,.0f}" for k in labels)
              + f" | {us['xla'] / us['tflite']:.2f}x |")


if __name__ == "__main__":
    main()
