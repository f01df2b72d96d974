"""Run recalibrations on one device and across replicas, in a fresh process: the child of the
distributed-equality tests (``test_distributed.py``).

    python -m tests.recalibrate.replicas mirrored REPLICAS OUT.npz WORKDIR
    python -m tests.recalibrate.replicas worker OUT.npz WORKDIR        (TF_CONFIG set)

WORKDIR holds ``branched.keras`` (``branched_model``), written once by the parent.
``mirrored`` splits the CPU into REPLICAS logical devices (which must happen before TensorFlow
starts, hence the fresh process) and runs each case once on one device and once under
``MirroredStrategy`` over them; ``worker`` runs each case under ``MultiWorkerMirroredStrategy``
as one worker of the cluster in ``TF_CONFIG``. Every result's statistics, sizes and
verification go to OUT.npz, and the wall time of each run to standard output as JSON, for the
parent to compare.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
X = np.load(FIXTURES / "data/digits_0_1.npy")
Y = np.load(FIXTURES / "data/digits_0_1_labels.npy")


def branched_model(path: Path) -> None:
    """Two BatchNorm layers on parallel branches, as in a residual block: their all-reduces
    have no order between them in the graph, and must still pair up across replicas."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1), name="image")
    left = keras.layers.BatchNormalization(name="left")(keras.layers.Conv2D(4, 3)(inputs))
    right = keras.layers.BatchNormalization(name="right")(keras.layers.Conv2D(4, 3)(inputs))
    merged = keras.layers.BatchNormalization(name="merged")(keras.layers.Add()([left, right]))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(merged))
    outputs = keras.layers.Dense(2, name="head")(pooled)
    keras.Model(inputs, outputs).save(path)


#: name -> (model, keyword arguments of bncheck.recalibrate). Batches of 30 split unevenly
#: over 4 replicas (8, 8, 7, 7); 3 samples leave a fourth replica with none.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "stale": ("stale_stats.keras", {"data": (X, Y), "batch_size": 30}),
    "short": ("stale_stats.keras", {"data": (X, Y), "batch_size": 32, "samples": 3}),
    "branched": ("branched.keras", {"data": (X, Y), "batch_size": 32}),
}


def run_cases(workdir: Path, strategy: Any, label: str, found: dict[str, Any]) -> dict[str, float]:
    import bncheck

    times = {}
    for case, (model, arguments) in CASES.items():
        folder = workdir if model == "branched.keras" else FIXTURES / "probe"
        start = time.perf_counter()
        result = bncheck.recalibrate(folder / model, strategy=strategy, **arguments)
        times[f"{case}/{label}"] = time.perf_counter() - start
        prefix = f"{case}/{label}"
        found[f"{prefix}/size"] = np.array([result.batches, result.samples])
        check = result.verification
        assert check is not None  # every case is verified
        found[f"{prefix}/verification"] = np.array(
            [
                check.samples,
                np.nan if check.metric is None else check.metric.stored,
                np.nan if check.metric is None else check.metric.reestimated,
                check.changed_predictions,
                check.relative_change,
            ],
            dtype="float64",
        )
        for path, population in result.statistics.items():
            found[f"{prefix}/{path}/mean"] = population.mean
            found[f"{prefix}/{path}/variance"] = population.variance
    return times


def mirrored(replicas: int, out: Path, workdir: Path) -> None:
    import tensorflow as tf

    [cpu] = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
    )
    found: dict[str, Any] = {}
    times = run_cases(workdir, None, "single", found)
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(replicas)])
    assert strategy.num_replicas_in_sync == replicas
    times.update(run_cases(workdir, strategy, "replicas", found))
    np.savez(out, **found)
    print(json.dumps(times))


def worker(out: Path, workdir: Path) -> None:
    import tensorflow as tf

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    found: dict[str, Any] = {}
    times = run_cases(workdir, strategy, "replicas", found)
    np.savez(out, **found)
    print(json.dumps(times))


if __name__ == "__main__":
    if sys.argv[1] == "mirrored":
        mirrored(int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
