"""bncheck's performance targets, measured as ratios in one run.

    python benchmarks/run.py [--repeat N] [--only NAME ...]

Prints each target's ratio next to its threshold plus the absolute medians, and exits 1 if a
ratio misses. Models are generated in a temporary directory (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@dataclass
class Target:
    name: str
    description: str
    ratio: float
    threshold: float
    higher_is_better: bool
    medians: dict[str, str] = field(default_factory=dict)

    @property
    def met(self) -> bool:
        return (
            self.ratio >= self.threshold if self.higher_is_better else self.ratio <= self.threshold
        )


def run_python(code: str, *args: str) -> tuple[float, str]:
    """Wall time of a fresh interpreter running ``code``, and its stdout."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"benchmark command failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed, done.stdout


# `bncheck inspect PATH [OPTION...]` in a fresh interpreter, reporting its own peak resident memory
# in KiB: VmHWM belongs to this process's memory map, whereas ru_maxrss would also count the
# benchmark's own peak, which Linux carries across exec.
INSPECT = textwrap.dedent(
    """
    import sys
    from bncheck.cli import main
    try:
        main(["inspect", *sys.argv[1:], "--format", "json", "--output", "/dev/null",
              "--fail-on", "never"])
    except SystemExit:
        pass
    with open("/proc/self/status") as status:
        print(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    """
)

# What a user would do without bncheck: load the model with Keras and walk its BN layers.
KERAS_LOAD = textwrap.dedent(
    """
    import sys
    import keras
    model = keras.models.load_model(sys.argv[1], compile=False)
    stack, stats = [model], []
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "_layers", []))
        if isinstance(layer, keras.layers.BatchNormalization):
            stats.append([w.numpy() for w in layer.weights])
    print(len(stats))
    """
)


def timed(code: str, path: Path, repeat: int) -> tuple[float, list[str]]:
    runs = [run_python(code, str(path)) for _ in range(repeat)]
    return statistics.median(t for t, _ in runs), [out for _, out in runs]


def make_model(kind: str, path: Path, checkpoint: bool = False) -> None:
    """Build a benchmark model in a separate process (keeps Keras out of this one); with
    ``checkpoint``, save it as a ``tf.train.Checkpoint`` in the directory ``path``."""
    code = textwrap.dedent(
        f"""
        import numpy as np, keras, tensorflow as tf
        from keras import layers
        kind, path, checkpoint = {kind!r}, {str(path)!r}, {checkpoint!r}
        if kind == "resnet50":
            model = keras.applications.ResNet50(weights=None)
        elif kind == "mobilenetv2":
            model = keras.applications.MobileNetV2((96, 96, 3), weights=None, classes=2)
        else:
            width = {{"dense-huge": 11600, "dense-big": 8192, "dense-tiny": 8}}[kind]
            inputs = keras.Input((width,))
            x = inputs
            for i in range(2):
                x = layers.Dense(width)(x)
                x = layers.BatchNormalization()(x)
            x = layers.Dense(16)(x)
            x = layers.BatchNormalization()(x)
            model = keras.Model(inputs, x)
        if checkpoint:
            tf.train.Checkpoint(model=model).save(path + "/ckpt")
        else:
            model.save(path)
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def static_vs_keras(workdir: Path, repeat: int) -> list[Target]:
    resnet = workdir / "resnet50.keras"
    make_model("resnet50", resnet)
    ours, _ = timed(INSPECT, resnet, repeat)
    theirs, _ = timed(KERAS_LOAD, resnet, repeat)
    return [
        Target(
            "static-vs-keras",
            "ResNet50 .keras: import keras + load_model + walk BN layers, over bncheck inspect",
            ratio=theirs / ours,
            threshold=10.0,
            higher_is_better=True,
            medians={
                "bncheck inspect": f"{ours:.2f} s",
                "keras load_model": f"{theirs:.2f} s",
                "file": f"{resnet.stat().st_size / 2**20:.0f} MiB",
            },
        )
    ]


def size_independence(workdir: Path, repeat: int) -> list[Target]:
    big, tiny = workdir / "dense-big.keras", workdir / "dense-tiny.keras"
    make_model("dense-big", big)
    make_model("dense-tiny", tiny)
    big_time, _ = timed(INSPECT, big, repeat)
    tiny_time, _ = timed(INSPECT, tiny, repeat)
    big_mib = big.stat().st_size / 2**20
    return [
        Target(
            "size-independence",
            f"inspect time, {big_mib:.0f} MiB Dense model over a tiny one (same BN layers)",
            ratio=big_time / tiny_time,
            threshold=1.5,
            higher_is_better=False,
            medians={"big": f"{big_time:.2f} s", "tiny": f"{tiny_time:.2f} s"},
        )
    ]


MEMORY_BUDGET_MIB = 300


def large_file_memory(workdir: Path, repeat: int) -> list[Target]:
    huge = workdir / "dense-huge.keras"
    make_model("dense-huge", huge)
    _, outputs = timed(INSPECT, huge, repeat)
    peak_mib = max(int(out.split()[-1]) for out in outputs) / 1024
    huge_mib = huge.stat().st_size / 2**20
    huge.unlink()
    return [
        Target(
            "large-file-memory",
            f"peak RSS inspecting a {huge_mib:.0f} MiB model, over {MEMORY_BUDGET_MIB} MiB",
            ratio=peak_mib / MEMORY_BUDGET_MIB,
            threshold=1.0,
            higher_is_better=False,
            medians={"peak RSS": f"{peak_mib:.0f} MiB", "file": f"{huge_mib:.0f} MiB"},
        )
    ]


def checkpoint_size_independence(workdir: Path, repeat: int) -> list[Target]:
    """Checkpoints are read through TensorFlow, whose import dominates; what must not grow with
    the data file is the rest: only the index and the BN variables are read."""
    big, tiny = workdir / "dense-big-ckpt", workdir / "dense-tiny-ckpt"
    make_model("dense-big", big, checkpoint=True)
    make_model("dense-tiny", tiny, checkpoint=True)
    big_time, big_out = timed(INSPECT, big, repeat)
    tiny_time, tiny_out = timed(INSPECT, tiny, repeat)
    big_mib = sum(f.stat().st_size for f in big.iterdir()) / 2**20
    extra_mib = (
        max(int(out.split()[-1]) for out in big_out) - max(int(out.split()[-1]) for out in tiny_out)
    ) / 1024
    return [
        Target(
            "checkpoint-size",
            f"inspect time, {big_mib:.0f} MiB Dense checkpoint over a tiny one (same BN layers)",
            ratio=big_time / tiny_time,
            threshold=1.5,
            higher_is_better=False,
            medians={"big": f"{big_time:.2f} s", "tiny": f"{tiny_time:.2f} s"},
        ),
        Target(
            "checkpoint-memory",
            f"extra peak RSS inspecting the {big_mib:.0f} MiB checkpoint (over the tiny one), "
            "over its size",
            ratio=max(extra_mib, 0.0) / big_mib,
            threshold=0.1,
            higher_is_better=False,
            medians={"extra peak RSS": f"{extra_mib:.0f} MiB"},
        ),
    ]


#: Models in the folder of the folder benchmark.
FOLDER_MODELS = 16


def folder_scan(workdir: Path, repeat: int) -> list[Target]:
    """One `bncheck inspect FOLDER` against one `bncheck inspect FILE` per model, as a shell
    loop (or a CI step per file) would run it."""
    model = workdir / "mobilenetv2.keras"
    make_model("mobilenetv2", model)
    folder = workdir / "folder"
    folder.mkdir()
    files = [folder / f"model_{i:02}.keras" for i in range(FOLDER_MODELS)]
    for file in files:
        shutil.copy(model, file)
    one_run, _ = timed(INSPECT, folder, repeat)
    jobs_run = statistics.median(
        run_python(INSPECT, str(folder), "--jobs", "2")[0] for _ in range(repeat)
    )
    per_file = statistics.median(
        sum(run_python(INSPECT, str(file))[0] for file in files) for _ in range(repeat)
    )
    return [
        Target(
            "folder-scan",
            f"{FOLDER_MODELS} MobileNetV2 .keras files: one process per file, over one "
            "`bncheck inspect FOLDER`",
            ratio=per_file / one_run,
            threshold=3.0,
            higher_is_better=True,
            medians={
                "inspect FOLDER": f"{one_run:.2f} s",
                "inspect FOLDER --jobs 2": f"{jobs_run:.2f} s",
                "one process per file": f"{per_file:.2f} s",
            },
        )
    ]


# The probe (after loading: safety scan, both modes, the rules) against what a user would run
# instead: two `model.predict` calls on the same batch. Each repeat loads fresh models, so both
# sides pay their one-off costs (tracing `predict`, first eager calls) every time.
PROBE_VS_PREDICT = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    from bncheck.probe.backend import import_keras
    import_keras()
    import keras
    from bncheck.engine import probe_findings
    from bncheck.probe import keras_model, measure, safety
    from bncheck.probe.results import ProbeResult
    from bncheck.settings import Settings

    path, repeat = sys.argv[1], int(sys.argv[2])
    batch = np.random.default_rng(0).standard_normal((32, 96, 96, 3)).astype("float32")

    def predict_twice():
        model = keras.models.load_model(path, compile=False)
        start = time.perf_counter()
        model.predict(batch, verbose=0)
        model.predict(batch, verbose=0)
        return time.perf_counter() - start

    def probe():
        model = keras_model.load_model(path, unsafe=False, custom_objects={})
        start = time.perf_counter()
        content = safety.scan_config(
            safety.model_config(path), (), keras_model.builtin_layer_names()
        )
        measured = measure.measure_keras(model, [batch])
        result = ProbeResult(path, "keras", content, False, modes=measured.modes,
                             outputs=measured.outputs, layers=measured.layers)
        probe_findings(result, Settings())
        return time.perf_counter() - start

    predict_twice(), probe()  # process-wide warm-up (kernel registration, thread pools)
    times = {"predict": [], "probe": []}
    for _ in range(repeat):
        times["predict"].append(predict_twice())
        times["probe"].append(probe())
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))
    """
)


def probe_vs_predict(workdir: Path, repeat: int) -> list[Target]:
    mobilenet = workdir / "mobilenetv2.keras"
    if not mobilenet.exists():
        make_model("mobilenetv2", mobilenet)
    _, out = run_python(PROBE_VS_PREDICT, str(mobilenet), str(repeat))
    medians = json.loads(out.strip().splitlines()[-1])
    return [
        Target(
            "probe-vs-predict",
            "MobileNetV2 96x96, batch 32, after loading: probe over two model.predict calls",
            ratio=medians["probe"] / medians["predict"],
            threshold=2.0,
            higher_is_better=False,
            medians={
                "probe": f"{medians['probe']:.2f} s",
                "2x predict": f"{medians['predict']:.2f} s",
            },
        )
    ]


# Recalibration's estimation pass against a plain compiled training-mode forward pass over the
# same in-memory batches, each from a freshly loaded model (both trace their function once).
RECALIBRATE_VS_FORWARD = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    from bncheck.probe.backend import import_keras
    import_keras()
    import keras
    import tensorflow as tf
    from bncheck.probe import keras_model
    from bncheck.recalibrate.estimate import estimate

    path, repeat = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    batches = [[rng.standard_normal((32, 96, 96, 3)).astype("float32")] for _ in range(30)]

    def forward():
        model = keras.models.load_model(path, compile=False)
        start = time.perf_counter()
        step = tf.function(lambda x: model(x, training=True))
        for (batch,) in batches:
            step(tf.constant(batch)).numpy()
        return time.perf_counter() - start

    def recalibrate():
        model = keras_model.load_model(path, unsafe=False, custom_objects={})
        targets = keras_model.batchnorm_layers(model)
        start = time.perf_counter()
        estimate(model, targets, batches, lambda done: None)
        return time.perf_counter() - start

    forward(), recalibrate()  # process-wide warm-up
    times = {"forward": [], "recalibrate": []}
    for _ in range(repeat):
        times["forward"].append(forward())
        times["recalibrate"].append(recalibrate())
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))
    """
)


def recalibrate_vs_forward(workdir: Path, repeat: int) -> list[Target]:
    mobilenet = workdir / "mobilenetv2.keras"
    if not mobilenet.exists():
        make_model("mobilenetv2", mobilenet)
    _, out = run_python(RECALIBRATE_VS_FORWARD, str(mobilenet), str(repeat))
    medians = json.loads(out.strip().splitlines()[-1])
    return [
        Target(
            "recalibrate-throughput",
            "MobileNetV2 96x96, 30 batches of 32: recalibration throughput over a plain "
            "compiled training-mode forward pass",
            ratio=medians["forward"] / medians["recalibrate"],
            threshold=0.8,
            higher_is_better=True,
            medians={
                "recalibrate": f"{medians['recalibrate']:.2f} s",
                "forward": f"{medians['forward']:.2f} s",
            },
        )
    ]


# The training-time guard's cost: fit() of a small CNN on the 10-class digits (upscaled to
# 32x32, batch 32) with BatchNormGuard(check_after_steps=100) against the same fit without it,
# on the same compiled model. Fits alternate in pairs, the order flipping each pair, so that
# load changes hit both sides; the target is the median of the pairs' ratios. The guard's own
# hooks are also timed, a direct measure of what it adds.
GUARD_OVERHEAD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from bncheck.probe.backend import import_keras
    import_keras()
    import keras
    import bncheck
    from sklearn.datasets import load_digits

    pairs, steps = int(sys.argv[1]), int(sys.argv[2])
    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((4, 4))).astype("float32")[..., None]
    order = np.resize(np.random.default_rng(0).permutation(len(images)), steps * 32)
    x, y = images[order], digits.target[order]

    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 1))
    h = inputs
    for width in (32, 64, 128):
        h = keras.layers.Conv2D(width, 3, padding="same", use_bias=False)(h)
        h = keras.layers.BatchNormalization()(h)
        h = keras.layers.ReLU()(h)
        h = keras.layers.MaxPooling2D()(h)
    outputs = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(h))
    model = keras.Model(inputs, outputs)
    model.compile(
        keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )

    class TimedGuard(bncheck.keras.BatchNormGuard):
        spent = 0.0

        def _timed(self, hook, *args):
            start = time.perf_counter()
            hook(*args)
            self.spent += time.perf_counter() - start

        def on_train_begin(self, logs=None):
            self._timed(super().on_train_begin, logs)

        def on_epoch_begin(self, epoch, logs=None):
            self._timed(super().on_epoch_begin, epoch, logs)

        def on_train_batch_begin(self, batch, logs=None):
            self._timed(super().on_train_batch_begin, batch, logs)

        def on_epoch_end(self, epoch, logs=None):
            self._timed(super().on_epoch_end, epoch, logs)

    def fit(guarded):
        guard = TimedGuard(check_after_steps=100, on_problem="raise")
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
                  callbacks=[guard] if guarded else [])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if guarded:  # the guard checked, at every 100 steps, and found the healthy run healthy
            result = guard.watch.last_result
            assert result is not None and result.steps == steps and not result.problem
        return wall, cpu, guard.spent

    fit(False), fit(True)  # warm-up: tracing the train step, first calls
    runs = {False: [], True: []}
    for index in range(pairs):
        for guarded in ((False, True) if index % 2 == 0 else (True, False)):
            runs[guarded].append(fit(guarded))

    # What one check costs on a bigger model: MobileNetV2's 52 BatchNorm layers.
    mobilenet = keras.applications.MobileNetV2((96, 96, 3), weights=None, classes=10)
    watch = bncheck.keras.watch(mobilenet)
    checks = []
    for _ in range(5):
        start = time.perf_counter()
        watch.check()
        checks.append(time.perf_counter() - start)
    print(json.dumps({"plain": runs[False], "guarded": runs[True], "mobilenet_check": checks}))
    """
)

#: Training steps per fit in the guard benchmark: two checks each (at 100 and at 200).
GUARD_STEPS = 200


def guard_overhead(workdir: Path, repeat: int) -> list[Target]:
    pairs = 3 * repeat
    _, out = run_python(GUARD_OVERHEAD, str(pairs), str(GUARD_STEPS))
    runs = json.loads(out.strip().splitlines()[-1])
    plain, guarded = runs["plain"], runs["guarded"]
    pair_ratios = [g[0] / p[0] for p, g in zip(plain, guarded, strict=True)]
    wall_ratio = statistics.median(pair_ratios)
    cpu_ratio = statistics.median(g[1] / p[1] for p, g in zip(plain, guarded, strict=True))
    plain_wall = statistics.median(p[0] for p in plain)
    inside = statistics.median(g[2] for g in guarded)
    mobilenet_check = statistics.median(runs["mobilenet_check"])
    return [
        Target(
            "guard-overhead",
            f"fit() of a small CNN on digits 32x32, batch 32, {GUARD_STEPS} steps: with "
            f"BatchNormGuard(check_after_steps=100) over without (median of {pairs} pairs)",
            ratio=wall_ratio,
            threshold=1.01,  # the guard's goal: at most 1% of a training step
            higher_is_better=False,
            medians={
                "step": f"{plain_wall / GUARD_STEPS * 1000:.1f} ms",
                "pair ratios": f"{min(pair_ratios):.3f} to {max(pair_ratios):.3f}",
                "inside the guard per fit": f"{inside * 1000:.1f} ms "
                f"({inside / plain_wall:.2%} of the fit)",
                "CPU-time ratio": f"{cpu_ratio:.4f}",
                "one check of MobileNetV2 (52 BN layers)": f"{mobilenet_check * 1000:.0f} ms",
            },
        )
    ]


BENCHMARKS: dict[str, Callable[[Path, int], list[Target]]] = {
    "static": static_vs_keras,
    "size": size_independence,
    "memory": large_file_memory,
    "checkpoint": checkpoint_size_independence,
    "folder": folder_scan,
    "probe": probe_vs_predict,
    "recalibrate": recalibrate_vs_forward,
    "guard": guard_overhead,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    args = parser.parse_args()
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-") as tmp:
        for name in args.only or BENCHMARKS:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            targets += BENCHMARKS[name](Path(tmp), args.repeat)
    print(f"{'target':<22} {'ratio':>8} {'threshold':>10}  result  medians")
    for target in targets:
        sign = ">=" if target.higher_is_better else "<="
        medians = ", ".join(f"{k} {v}" for k, v in target.medians.items())
        print(
            f"{target.name:<22} {target.ratio:>8.2f} {sign + format(target.threshold, 'g'):>10}  "
            f"{'ok' if target.met else 'MISS':<6}  {medians}"
        )
        print(f"{'':<22} {target.description}")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}, {sys.platform}")
    return 0 if all(t.met for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
