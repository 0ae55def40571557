"""Data-parallel training matches single-device training: mirrored over two logical CPUs, and two
workers as two processes on loopback (MultiWorkerMirroredStrategy with TF_CONFIG)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")


def _run(mode, out, env=None):
    return subprocess.Popen([sys.executable, str(WORKER), mode, str(out)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process, replicas=1):
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output[-3000:]
    assert f"replicas {replicas}" in output  # the strategy really ran that many replicas


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "probs.npy"
    _finish(_run("single", out))
    return np.load(out)


def test_mirrored_over_two_logical_cpus_matches_single_device(single_device, tmp_path):
    _finish(_run("mirrored", tmp_path / "probs.npy"), replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), single_device, atol=2e-3)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_on_loopback_match_single_device(single_device, tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    processes = [
        _run("multi_worker", tmp_path / "probs.npy",
             {"TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}})})
        for i in range(2)
    ]
    for p in processes:
        _finish(p, replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), single_device, atol=2e-3)
