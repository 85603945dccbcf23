"""Choosing the tf.distribute strategy (the model's layers are built in its scope)."""

from __future__ import annotations

import json
import os

import tensorflow as tf


def configure_cpu_devices(n: int) -> None:
    """Split the host CPU into `n` logical devices (must run before TF initialises)."""
    if n <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current and len(current) == n:
        return
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
        raise RuntimeError(f"cannot create {n} virtual CPU devices: TensorFlow is already initialised ({e})") \
            from None


def _tf_config_workers() -> int:
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    except ValueError:
        raise ValueError("TF_CONFIG is not valid JSON") from None
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def make_strategy(name: str = "auto", cpu_devices: int = 0) -> tf.distribute.Strategy:
    """auto: multi-worker when TF_CONFIG names several workers, mirrored over GPUs (or over
    virtual CPU devices when asked for), else the default strategy."""
    if name == "multi_worker" or (name == "auto" and _tf_config_workers() > 1):
        return tf.distribute.MultiWorkerMirroredStrategy()
    configure_cpu_devices(cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    if name == "mirrored" or (name == "auto" and (len(gpus) > 1 or cpu_devices > 1)):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=(
            tf.distribute.ReductionToOneDevice() if not gpus else None))
    if name in ("auto", "default"):
        return tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and
                                    "chief" not in resolver.cluster_spec().as_dict())
