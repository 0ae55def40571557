"""Data-parallel training matches single-device training: mirrored over two logical CPUs, and two
workers as two processes on loopback (MultiWorkerMirroredStrategy with TF_CONFIG)."""
from pathlib import Path

import numpy as np
import pytest

from tests.distributed_helpers import finish as _finish, start, two_worker_envs

WORKER = Path(__file__).with_name("distributed_worker.py")


def _run(mode, out, env=None):
    return start(WORKER, mode, out, env=env)


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "probs.npy"
    _finish(_run("single", out))
    return np.load(out)


def test_mirrored_over_two_logical_cpus_matches_single_device(single_device, tmp_path):
    _finish(_run("mirrored", tmp_path / "probs.npy"), replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), single_device, atol=2e-3)


def test_two_workers_on_loopback_match_single_device(single_device, tmp_path):
    processes = [_run("multi_worker", tmp_path / "probs.npy", env) for env in two_worker_envs()]
    for p in processes:
        _finish(p, replicas=2)
    np.testing.assert_allclose(np.load(tmp_path / "probs.npy"), single_device, atol=2e-3)
