"""tf.distribute for training: mirrored over this machine's devices, or multi-worker over several
machines (``MultiWorkerMirroredStrategy``, configured by the ``TF_CONFIG`` environment variable).

Data-parallel training keeps the global batch: each replica takes its share of every batch and the
gradients are averaged, so the result matches single-device training up to float summation order.
"""
from __future__ import annotations

import contextlib

STRATEGIES = ("mirrored", "multi_worker")


def split_cpu(n):
    """Present this machine's CPU as ``n`` logical devices (before TensorFlow first runs an op),
    so a mirrored strategy has several replicas without GPUs."""
    from kerasllm._tf import tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(n))


def get_strategy(strategy):
    """None, a ``tf.distribute.Strategy``, or a name: "mirrored" (all local devices) or
    "multi_worker" (the cluster in ``TF_CONFIG``)."""
    if strategy is None or not isinstance(strategy, str):
        return strategy
    from kerasllm._tf import tf

    if strategy == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
                  [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if strategy == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be None, a tf.distribute.Strategy or one of {STRATEGIES}, got {strategy!r}")


def scope(strategy):
    """The strategy's variable scope, or a no-op without a strategy."""
    return strategy.scope() if strategy is not None else contextlib.nullcontext()
