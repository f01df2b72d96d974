"""Recalibration's estimation pass on one device and across replicas: throughput and equality.

    python benchmarks/distributed.py [--replicas 1 2 4] [--batches 20] [--batch-size 32]

For each replica count, a fresh process splits the CPU into that many logical devices (or, for
1, uses it whole), loads a MobileNetV2 (96x96, random weights, 52 BatchNorm layers) and runs
the estimation pass over the same random batches: once on one device and once under
``MirroredStrategy`` over the logical devices. It prints the steady-state throughput (samples
per second after the first batch, which pays for tracing) and how far the replicated
statistics are from the single-device ones (largest relative difference of a variance, and of
a mean relative to its channel's scale).

This measures figures, it sets no target. Logical devices share the machine's cores, so no
speed-up is expected here: what the figures show is the cost of the distributed path (the
split, one all-reduce per BatchNorm layer and batch) on top of the same arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

MEASURE = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import tensorflow as tf

    path, replicas, batches, batch_size = sys.argv[1], *map(int, sys.argv[2:5])
    [cpu] = tf.config.list_physical_devices("CPU")
    if replicas > 1:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        )
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.data import Batch
    from bncheck.probe.measure import estimate
    from bncheck.probe.runtimes.passes import Passes

    rng = np.random.default_rng(0)
    data = [
        Batch([rng.standard_normal((batch_size, 96, 96, 3)).astype("float32")])
        for _ in range(batches)
    ]

    def run(strategy):
        scope = strategy.scope() if strategy is not None else None
        if scope is not None:
            with scope:
                model = keras_model.load_model(path, unsafe=False, custom_objects={})
        else:
            model = keras_model.load_model(path, unsafe=False, custom_objects={})
        times = []
        layers = keras_model.batchnorm_layers(model)
        with Passes(model, layers, strategy=strategy, figures=False) as passes:
            start = time.perf_counter()
            sums, _, _ = estimate(passes, data, lambda *_: times.append(time.perf_counter()))
        steady = (len(times) - 1) * batch_size / (times[-1] - times[0])
        return sums, steady, times[0] - start

    single, single_rate, single_first = run(None)
    devices = [f"/cpu:{index}" for index in range(replicas)]
    replicated, rate, first = run(tf.distribute.MirroredStrategy(devices))
    worst_mean = worst_variance = 0.0
    for layer, sums in single.items():
        one, many = sums.population(), replicated[layer].population()
        scale = np.maximum(np.sqrt(one.variance), np.abs(one.mean))
        worst_mean = max(worst_mean, float(np.max(np.abs(many.mean - one.mean) / scale)))
        worst_variance = max(
            worst_variance, float(np.max(np.abs(many.variance - one.variance) / one.variance))
        )
    print(json.dumps({
        "replicas": replicas, "layers": len(single),
        "single samples/s": single_rate, "replicated samples/s": rate,
        "single first batch s": single_first, "replicated first batch s": first,
        "mean difference": worst_mean, "variance difference": worst_variance,
    }))
    """
)

MAKE_MODEL = textwrap.dedent(
    """
    import sys, keras
    keras.utils.set_random_seed(0)
    keras.applications.MobileNetV2((96, 96, 3), weights=None, classes=2).save(sys.argv[1])
    """
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-") as tmp:
        model = Path(tmp) / "mobilenetv2.keras"
        subprocess.run(
            [sys.executable, "-c", MAKE_MODEL, str(model)], check=True, capture_output=True
        )
        print(
            f"{'replicas':>8} {'one device':>12} {'replicated':>12} {'ratio':>6} "
            f"{'mean diff':>10} {'var diff':>10}  (samples/s after the first batch)"
        )
        for replicas in args.replicas:
            done = subprocess.run(
                [sys.executable, "-c", MEASURE, str(model), str(replicas), str(args.batches),
                 str(args.batch_size)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(done.stdout.strip().splitlines()[-1])
            one, many = row["single samples/s"], row["replicated samples/s"]
            print(
                f"{replicas:>8} {one:>12.1f} {many:>12.1f} {many / one:>6.2f} "
                f"{row['mean difference']:>10.1e} {row['variance difference']:>10.1e}"
            )
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; {args.batches} "
        f"batches of {args.batch_size}, MobileNetV2 96x96 (52 BatchNorm layers)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
