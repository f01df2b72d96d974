"""``--strategy``: recalibration across devices and machines with TensorFlow's own engine.

``mirrored`` is ``tf.distribute.MirroredStrategy`` over every local GPU (or ``--devices``);
``multi-worker`` is ``tf.distribute.MultiWorkerMirroredStrategy`` over the cluster that
``TF_CONFIG`` describes, one process per machine, each using its local GPUs. The model is loaded
under the strategy's scope; ``bncheck.probe.runtimes.passes`` splits each global batch across the
replicas and synchronises BatchNorm's batch moments across them, so the statistics are those
one device computes on the same batches (see ``docs/distributed.md``). Only the chief writes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from bncheck.errors import UsageError

MIRRORED = "mirrored"
MULTI_WORKER = "multi-worker"
STRATEGIES = (MIRRORED, MULTI_WORKER)


def make_strategy(name: str | None, devices: Sequence[str] = ()) -> Any:
    """The ``tf.distribute.Strategy`` that ``--strategy`` and ``--devices`` name; ``None`` for
    one device. Created before any other TensorFlow work, as the multi-worker strategy needs."""
    if name is None:
        if devices:
            raise UsageError("--devices needs --strategy mirrored")
        return None
    if name not in STRATEGIES:
        raise UsageError(f"--strategy {name!r}: choose {' or '.join(STRATEGIES)}")
    from bncheck.probe.runtimes.backend import import_keras

    import_keras()
    import tensorflow as tf

    if name == MIRRORED:
        _check_devices(devices)
        try:
            return tf.distribute.MirroredStrategy(devices=list(devices) or None)
        except (ValueError, RuntimeError, tf.errors.OpError) as exc:
            shown = ",".join(devices) or "the local devices"
            raise UsageError(f"--devices {shown}: {_one_line(exc)}") from None
    if devices:
        raise UsageError(
            "--devices applies to --strategy mirrored; each worker of --strategy multi-worker "
            "uses its local GPUs"
        )
    _check_cluster(os.environ.get("TF_CONFIG"))
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (ValueError, RuntimeError, tf.errors.OpError) as exc:
        raise UsageError(f"--strategy multi-worker: {_one_line(exc)}") from None


def _check_devices(devices: Sequence[str]) -> None:
    """Every device must exist here: TensorFlow would quietly place a missing one's work on
    another device."""
    import tensorflow as tf

    here = [tf.DeviceSpec.from_string(device.name) for device in tf.config.list_logical_devices()]
    known = {(spec.device_type, spec.device_index) for spec in here}
    for device in devices:
        try:
            spec = tf.DeviceSpec.from_string(device)
        except ValueError:
            raise UsageError(f"--devices {device!r} is not a device such as /gpu:0") from None
        if ((spec.device_type or "").upper(), spec.device_index) not in known:
            names = ", ".join(f"/{s.device_type.lower()}:{s.device_index}" for s in here)
            raise UsageError(f"--devices {device}: no such device here (there are {names})")


def _check_cluster(text: str | None) -> None:
    """``TF_CONFIG`` must name this process's task in a cluster of workers."""
    if not text:
        raise UsageError(
            "--strategy multi-worker reads the cluster from the TF_CONFIG environment "
            "variable, which is not set (see docs/distributed.md)"
        )
    try:
        config = json.loads(text)
        workers = config["cluster"]["worker"]
        task = config["task"]
        known = task["type"] in config["cluster"] and isinstance(task["index"], int)
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            'TF_CONFIG is not {"cluster": {"worker": [HOST:PORT, ...]}, "task": {"type": '
            '"worker", "index": N}}'
        ) from None
    if not isinstance(workers, list) or not workers or not known:
        raise UsageError("TF_CONFIG names no worker list, or a task outside its cluster")


def is_chief(strategy: Any) -> bool:
    """Whether this process writes: always on one machine; the chief of a cluster (the task
    ``chief``, else worker 0), which TensorFlow also has write checkpoints."""
    return strategy is None or bool(strategy.extended.should_checkpoint)


def in_scope(strategy: Any, model: Any) -> bool:
    """Whether ``model``'s variables were created under ``strategy``'s scope."""
    return all(
        strategy.extended.variable_created_in_scope(getattr(variable, "value", variable))
        for variable in model.variables
    )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
