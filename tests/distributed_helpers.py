"""One set-up for the data-parallel tests (tests/test_distributed.py, tests/test_lm_training.py) and the
worker scripts they start (tests/distributed_worker.py, tests/lm_distributed_worker.py).

Test side: ``start`` runs a worker script in a fresh process, ``two_worker_envs`` gives each of two
loopback workers its ``TF_CONFIG``, ``finish`` checks a worker's exit and replica count.
Worker side: ``worker_strategy`` builds the strategy a mode names and says whether this process
writes the result. Light imports only (the workers must build the strategy before TensorFlow runs an op).
"""
import json
import os
import socket
import subprocess
import sys

MODES = ("single", "mirrored", "multi_worker")


# --- test side ---------------------------------------------------------------------------------
def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def two_worker_envs():
    """The TF_CONFIG environment of each of two workers on loopback ports (worker 0 is the chief)."""
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    return [{"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})}
            for i in range(2)]


def start(script, mode, out, *extra, env=None):
    """Run ``script`` (a worker in tests/) in a fresh process: ``script mode out [extra...]``."""
    return subprocess.Popen([sys.executable, str(script), mode, str(out), *map(str, extra)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(process, replicas=1):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert f"replicas {replicas}" in output  # the strategy really ran that many replicas


# --- worker side -------------------------------------------------------------------------------
def worker_strategy(mode):
    """(strategy or None, whether this process writes the result) for ``mode``; prints the replica
    count for ``finish``. multi_worker reads TF_CONFIG; mirrored splits the CPU into two devices."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    from kerasllm import distribute

    if mode == "mirrored":
        distribute.split_cpu(2)
    strategy = distribute.get_strategy(None if mode == "single" else mode)  # multi-worker: before any op
    print("replicas", strategy.num_replicas_in_sync if strategy else 1, flush=True)
    chief = mode != "multi_worker" or json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0
    return strategy, chief
