"""One core, one thread (BENCHMARKING.md): the preamble the generation benchmarks share.

    from pinning import pin, describe
    tf, keras = pin(args.core, args.threads)   # before anything else imports TensorFlow
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def add_arguments(p, core=0):
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--core", type=int, default=core, help="CPU core to pin to; -1: no pinning")
    return p


def pin(core, threads):
    """Pin this process to ``core`` (-1: no pinning), limit TensorFlow and OpenMP to ``threads``, put
    the checkout first on sys.path -> (tf, keras) from ``kerasllm._tf``."""
    if core >= 0:
        os.sched_setaffinity(0, {core})
    os.environ["OMP_NUM_THREADS"] = str(threads)
    sys.path.insert(0, str(ROOT))
    from kerasllm._tf import keras, tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf, keras


def describe(core, threads):
    """The settings line every table starts with (pinning, threads, load average now)."""
    return (f"pinned to core {core if core >= 0 else 'none'}, {threads} thread(s), "
            f"load average {os.getloadavg()[0]:.1f} (2-core machine shared with other jobs)")
