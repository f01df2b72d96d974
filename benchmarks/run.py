"""bncheck's performance targets, measured as ratios in one run.

    python benchmarks/run.py [--repeat N] [--only NAME ...]

Prints each target's ratio next to its threshold plus the absolute medians, and exits 1 if a
ratio misses. Models are generated in a temporary directory (nothing is downloaded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

import numpy as np

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
    elapsed, _, stdout = run_python_cpu(code, *args)
    return elapsed, stdout


def run_python_cpu(code: str, *args: str) -> tuple[float, float, str]:
    """Wall time and CPU time (user and system) of a fresh interpreter running ``code``, and its
    stdout. On a shared machine the CPU time barely moves with the load; the wall time does."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"benchmark command failed ({done.returncode}): {done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu, done.stdout


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


def interleaved(
    commands: dict[str, tuple[str, list[str]]], repeat: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Median wall and CPU times of each ``(code, args)``, the commands taking turns in every
    round so that a change in the machine's load touches them all alike. One untimed round
    first fills the bytecode cache and the page cache."""
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    for code, args in commands.values():
        run_python_cpu(code, *args)
    for _ in range(repeat):
        for name, (code, args) in commands.items():
            elapsed, used, _ = run_python_cpu(code, *args)
            wall[name].append(elapsed)
            cpu[name].append(used)
    return (
        {name: statistics.median(values) for name, values in wall.items()},
        {name: statistics.median(values) for name, values in cpu.items()},
    )


def make_model(kind: str, path: Path, save: str = "keras") -> None:
    """Build a benchmark model in a separate process (keeps Keras out of this one) and save it:
    ``keras`` with ``model.save``, ``checkpoint`` as a ``tf.train.Checkpoint`` in the directory
    ``path``, ``export`` as a SavedModel (``model.export``), ``tf_keras`` as tf.keras's
    SavedModel (``model.save`` of the same architecture built with tf.keras)."""
    if path.exists():
        return  # made by an earlier benchmark of this run
    if save == "tf_keras":
        code = textwrap.dedent(
            f"""
            import tf_keras
            assert {kind!r} == "resnet50"
            tf_keras.applications.ResNet50(weights=None).save({str(path)!r})
            """
        )
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        return
    code = textwrap.dedent(
        f"""
        import numpy as np, keras, tensorflow as tf
        from keras import layers
        kind, path, save = {kind!r}, {str(path)!r}, {save!r}
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
        if save == "checkpoint":
            tf.train.Checkpoint(model=model).save(path + "/ckpt")
        elif save == "export":
            model.export(path)
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
            threshold=25.0,
            higher_is_better=True,
            medians={
                "bncheck inspect": f"{ours:.2f} s",
                "keras load_model": f"{theirs:.2f} s",
                "file": f"{resnet.stat().st_size / 2**20:.0f} MiB",
            },
        )
    ]


# The least any static inspection can cost: starting Python and importing what bncheck's core
# depends on.
FLOOR = "import numpy, h5py, click, tabulate"

# `bncheck inspect PATH` as the installed command runs it: the console script calls
# `bncheck.__main__.main`, which ends the process as the command line does.
COMMAND = textwrap.dedent(
    """
    import sys
    from bncheck.__main__ import main
    sys.argv = ["bncheck", "inspect", *sys.argv[1:], "--format", "json", "--output",
                "/dev/null", "--fail-on", "never"]
    main()
    """
)


def static_floor(workdir: Path, repeat: int) -> list[Target]:
    """ResNet50 as ``.keras`` and ``.h5`` and a ResNet-50 state dict as ``.pt`` and
    ``.safetensors``, each inspected against the floor, all taking turns in every round."""
    models = {
        "keras": workdir / "resnet50.keras",
        "h5": workdir / "resnet50.h5",
        "pt": workdir / "resnet50.pt",
        "safetensors": workdir / "resnet50.safetensors",
    }
    make_model("resnet50", models["keras"])
    make_model("resnet50", models["h5"])
    make_resnet50_state(models["pt"], models["safetensors"])
    commands = {suffix: (COMMAND, [str(path)]) for suffix, path in models.items()}
    medians, cpu = interleaved({**commands, "floor": (FLOOR, [])}, repeat)
    return [
        Target(
            "static-floor" if suffix == "keras" else f"static-floor-{suffix}",
            f"ResNet50 .{suffix}: bncheck inspect end to end, over starting Python and importing "
            "numpy, h5py, click and tabulate",
            ratio=medians[suffix] / medians["floor"],
            threshold=1.3,
            higher_is_better=False,
            medians={
                "bncheck inspect": f"{medians[suffix]:.2f} s",
                "floor": f"{medians['floor']:.2f} s",
                "CPU": f"{cpu[suffix]:.2f} s vs {cpu['floor']:.2f} s "
                f"({cpu[suffix] / cpu['floor']:.2f})",
            },
        )
        for suffix in models
    ]


def tensorflow_formats(workdir: Path, repeat: int) -> list[Target]:
    """The same ResNet50 as a TF2 checkpoint and as both kinds of SavedModel, each inspected
    against its .keras file."""
    models = {
        "keras": workdir / "resnet50.keras",
        "checkpoint": workdir / "resnet50-checkpoint",
        "export": workdir / "resnet50-export",
        "tf_keras": workdir / "resnet50-tf-keras-savedmodel",
    }
    for save, path in models.items():
        make_model("resnet50", path, save=save)
    medians, cpu = interleaved({s: (INSPECT, [str(p)]) for s, p in models.items()}, repeat)
    keras_time = medians["keras"]
    described = {
        "checkpoint": ("tf2-ckpt-vs-keras", "a TF2 checkpoint (tf.train.Checkpoint)"),
        "export": ("export-vs-keras", "a SavedModel from Keras 3 model.export"),
        "tf_keras": ("tf-keras-sm-vs-keras", "a SavedModel from tf.keras model.save"),
    }
    return [
        Target(
            name,
            f"ResNet50 as {what}, over the .keras file: bncheck inspect end to end",
            ratio=medians[save] / keras_time,
            threshold=1.5,
            higher_is_better=False,
            medians={
                save: f"{medians[save]:.2f} s",
                ".keras": f"{keras_time:.2f} s",
                "CPU": f"{cpu[save]:.2f} s vs {cpu['keras']:.2f} s",
            },
        )
        for save, (name, what) in described.items()
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
    """Only the index and the BN variables are read: time and memory do not grow with the rest
    of the data file."""
    big, tiny = workdir / "dense-big-ckpt", workdir / "dense-tiny-ckpt"
    make_model("dense-big", big, save="checkpoint")
    make_model("dense-tiny", tiny, save="checkpoint")
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


# `bncheck inspect` as it read before containment: every file in the command's own process.
IN_PROCESS = INSPECT.replace(
    "from bncheck.cli import main",
    "from bncheck import engine\n"
    "from bncheck.errors import ModelReadError\n"
    "def read_all(reader, paths, jobs, limits=None):\n"
    "    outcomes = []\n"
    "    for path in paths:\n"
    "        try:\n"
    "            outcomes.append(reader(path))\n"
    "        except ModelReadError as exc:\n"
    "            outcomes.append(exc)\n"
    "    return outcomes\n"
    "engine.read_all = read_all\n"
    "from bncheck.cli import main",
)


def containment(workdir: Path, repeat: int) -> list[Target]:
    """`bncheck inspect FOLDER` reading each model in a worker process, against reading them
    all in the command's own process."""
    model = workdir / "mobilenetv2.keras"
    make_model("mobilenetv2", model)
    folder = workdir / "contained"
    folder.mkdir()
    for i in range(FOLDER_MODELS):
        shutil.copy(model, folder / f"model_{i:02}.keras")
    wall, cpu = interleaved(
        {"contained": (INSPECT, [str(folder)]), "in-process": (IN_PROCESS, [str(folder)])},
        repeat,
    )
    return [
        Target(
            "containment",
            f"{FOLDER_MODELS} MobileNetV2 .keras files: `bncheck inspect FOLDER` reading in "
            "worker processes, over reading in-process (wall time)",
            ratio=wall["contained"] / wall["in-process"],
            threshold=1.10,
            higher_is_better=False,
            medians={
                "contained": f"{wall['contained']:.2f} s ({cpu['contained']:.2f} s CPU)",
                "in-process": f"{wall['in-process']:.2f} s ({cpu['in-process']:.2f} s CPU)",
            },
        )
    ]


#: Models in the folder that `warm_runs` probes.
WARM_MODELS = 4


def warm_runs(workdir: Path, repeat: int) -> list[Target]:
    """`bncheck inspect --probe FOLDER` over 4 small Keras models, against the same models each
    probed by a command of its own: the folder's runs fork from one server that imported
    TensorFlow once, where each command imports it for its run."""
    model = Path(__file__).resolve().parents[1] / "fixtures" / "probe" / "stale_stats.keras"
    folder = workdir / "warm"
    folder.mkdir()
    paths = [folder / f"model_{i}.keras" for i in range(WARM_MODELS)]
    for path in paths:
        shutil.copy(model, path)
    run_python_cpu(INSPECT, str(paths[0]), "--probe")  # fills the bytecode and page caches
    folder_wall, folder_cpu, each_wall, each_cpu = [], [], [], []
    for _ in range(repeat):
        wall, cpu, _ = run_python_cpu(INSPECT, str(folder), "--probe")
        folder_wall.append(wall)
        folder_cpu.append(cpu)
        runs = [run_python_cpu(INSPECT, str(path), "--probe") for path in paths]
        each_wall.append(sum(wall for wall, _, _ in runs))
        each_cpu.append(sum(cpu for _, cpu, _ in runs))
    ours, theirs = statistics.median(folder_wall), statistics.median(each_wall)
    return [
        Target(
            "warm-runs",
            f"{WARM_MODELS} small Keras models: `bncheck inspect --probe FOLDER` over one "
            "command per model (wall time)",
            ratio=ours / theirs,
            threshold=0.6,
            higher_is_better=False,
            medians={
                "folder": f"{ours:.2f} s ({statistics.median(folder_cpu):.2f} s CPU)",
                "one command each": f"{theirs:.2f} s ({statistics.median(each_cpu):.2f} s CPU)",
            },
        )
    ]


# The probe over N samples of real data (after loading: both sweeps, the comparison with
# re-estimated statistics, the rules) against the least a user could run to see both modes on the
# same samples: one compiled inference pass and one compiled training-mode pass. Each repeat loads
# fresh models, so both sides pay their one-off tracing every time.
PROBE_VS_PASSES = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    from bncheck.probe.runtimes.backend import import_keras
    import_keras()
    import keras
    import tensorflow as tf
    from bncheck.engine import probe_findings
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.options import ProbeOptions
    from bncheck.probe.runner import BatchPlan, probe_keras_model
    from bncheck.settings import Settings

    path, data, repeat = sys.argv[1], sys.argv[2], int(sys.argv[3])
    images = np.load(data)
    batches = [images[start : start + 32] for start in range(0, len(images), 32)]

    def two_passes():
        model = keras.models.load_model(path, compile=False)
        start = time.perf_counter()
        inference = tf.function(lambda x: model(x, training=False))
        training = tf.function(lambda x: model(x, training=True))
        for batch in batches:
            inference(tf.constant(batch)).numpy()
        for batch in batches:
            training(tf.constant(batch)).numpy()
        return time.perf_counter() - start

    def probe():
        model = keras_model.load_model(path, unsafe=False, custom_objects={})
        start = time.perf_counter()
        options = ProbeOptions(data=data, batch_size=32)
        source = BatchPlan(keras_model.input_specs(model), options)
        result = probe_keras_model(path, model, source, (), options, lambda _: None, {})
        probe_findings(result, Settings())
        assert result.data.samples == len(images)
        return time.perf_counter() - start

    two_passes(), probe()  # process-wide warm-up (kernel registration, thread pools)
    times = {"passes": [], "probe": []}
    for _ in range(repeat):
        times["passes"].append(two_passes())
        times["probe"].append(probe())
    print(json.dumps({name: statistics.median(values) for name, values in times.items()}))
    """
)

# The probe's default --samples: what `inspect --data` reads of a large data set.
PROBE_SAMPLES = 2048


def probe_cost(workdir: Path, repeat: int) -> list[Target]:
    mobilenet = workdir / "mobilenetv2.keras"
    if not mobilenet.exists():
        make_model("mobilenetv2", mobilenet)
    data = workdir / "images.npy"
    rng = np.random.default_rng(0)
    np.save(data, rng.standard_normal((PROBE_SAMPLES, 96, 96, 3)).astype("float32"))
    _, out = run_python(PROBE_VS_PASSES, str(mobilenet), str(data), str(repeat))
    medians = json.loads(out.strip().splitlines()[-1])
    return [
        Target(
            "probe-cost",
            f"MobileNetV2 96x96, {PROBE_SAMPLES} samples in batches of 32, after loading: the "
            "probe over one compiled inference pass plus one training-mode pass",
            ratio=medians["probe"] / medians["passes"],
            threshold=1.5,
            higher_is_better=False,
            medians={
                "probe": f"{medians['probe']:.2f} s",
                "two passes": f"{medians['passes']:.2f} s",
            },
        )
    ]


# Recalibration's estimation pass against a plain compiled training-mode forward pass over the
# same in-memory batches, each from a freshly loaded model (both trace their function once).
RECALIBRATE_VS_FORWARD = textwrap.dedent(
    """
    import json, statistics, sys, time
    import numpy as np
    from bncheck.probe.runtimes.backend import import_keras
    import_keras()
    import keras
    import tensorflow as tf
    from bncheck.probe.runtimes import keras_model
    from bncheck.probe.data import Batch
    from bncheck.probe.measure import estimate
    from bncheck.probe.runtimes.passes import Passes

    path, repeat = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    batches = [Batch([rng.standard_normal((32, 96, 96, 3)).astype("float32")]) for _ in range(30)]

    def forward():
        model = keras.models.load_model(path, compile=False)
        start = time.perf_counter()
        step = tf.function(lambda x: model(x, training=True))
        for batch in batches:
            step(tf.constant(batch.inputs[0])).numpy()
        return time.perf_counter() - start

    def recalibrate():
        model = keras_model.load_model(path, unsafe=False, custom_objects={})
        start = time.perf_counter()
        with Passes(model, keras_model.batchnorm_layers(model), figures=False) as passes:
            estimate(passes, batches)
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


# A ResNet-50 state dict as torchvision names and shapes it, with random values: what a
# ``torch.save(model.state_dict())`` of torchvision's resnet50 holds, without torchvision.
MAKE_RESNET50_STATE = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    state = {}

    def conv(name, out_channels, in_channels, size):
        state[name + ".weight"] = torch.randn(out_channels, in_channels, size, size) * 0.05

    def bn(name, channels):
        state[name + ".weight"] = torch.rand(channels) + 0.5
        state[name + ".bias"] = torch.randn(channels) * 0.1
        state[name + ".running_mean"] = torch.randn(channels) * 0.1
        state[name + ".running_var"] = torch.rand(channels) + 0.5
        state[name + ".num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    channels = 64
    for stage, (blocks, planes) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), 1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            conv(prefix + ".conv1", planes, channels, 1)
            bn(prefix + ".bn1", planes)
            conv(prefix + ".conv2", planes, planes, 3)
            bn(prefix + ".bn2", planes)
            conv(prefix + ".conv3", planes * 4, planes, 1)
            bn(prefix + ".bn3", planes * 4)
            if block == 0:
                conv(prefix + ".downsample.0", planes * 4, channels, 1)
                bn(prefix + ".downsample.1", planes * 4)
            channels = planes * 4
    state["fc.weight"] = torch.randn(1000, 2048) * 0.01
    state["fc.bias"] = torch.zeros(1000)
    torch.save(state, sys.argv[1])
    save_file(state, sys.argv[2])
    """
)


def make_resnet50_state(pt: Path, safetensors: Path) -> None:
    """The ResNet-50 state dict as ``.pt`` and ``.safetensors``, unless an earlier benchmark
    of this run made them."""
    if pt.exists() and safetensors.exists():
        return
    subprocess.run(
        [sys.executable, "-c", MAKE_RESNET50_STATE, str(pt), str(safetensors)],
        check=True,
        capture_output=True,
    )


# What a PyTorch user would do without bncheck: import torch and load the file safely.
TORCH_LOAD = textwrap.dedent(
    """
    import sys
    import torch
    state = torch.load(sys.argv[1], weights_only=True)
    print(sum(1 for name in state if name.endswith("running_var")))
    """
)
TORCH_LOAD_SAFETENSORS = textwrap.dedent(
    """
    import sys
    import torch
    from safetensors.torch import load_file
    state = load_file(sys.argv[1])
    print(sum(1 for name in state if name.endswith("running_var")))
    """
)


def pytorch_vs_torch_load(workdir: Path, repeat: int) -> list[Target]:
    """Static inspection of a ResNet-50 state dict, as .pt and as .safetensors, against importing
    PyTorch and loading the same file (safetensors: through its PyTorch loader)."""
    pt, safetensors = workdir / "resnet50.pt", workdir / "resnet50.safetensors"
    make_resnet50_state(pt, safetensors)
    targets = []
    for path, theirs_code, what in (
        (pt, TORCH_LOAD, "torch.load(weights_only=True)"),
        (safetensors, TORCH_LOAD_SAFETENSORS, "safetensors.torch.load_file"),
    ):
        ours, ours_out = timed(INSPECT, path, repeat)
        peak_mib = max(int(out.split()[-1]) for out in ours_out) / 1024
        theirs, theirs_out = timed(theirs_code, path, repeat)
        if theirs_out[0].split()[0] != "53":
            raise RuntimeError(f"{what} did not find 53 BatchNorm layers: {theirs_out[0]!r}")
        suffix = path.suffix.lstrip(".")
        targets.append(
            Target(
                f"{suffix}-vs-torch",
                f"ResNet-50 .{suffix} ({path.stat().st_size / 2**20:.0f} MiB): import torch + "
                f"{what}, over bncheck inspect",
                ratio=theirs / ours,
                threshold=10.0,
                higher_is_better=True,
                medians={
                    "bncheck inspect": f"{ours:.2f} s",
                    what: f"{theirs:.2f} s",
                    "bncheck peak RSS": f"{peak_mib:.0f} MiB",
                },
            )
        )
    return targets


# The training-time guard's cost: fit() of a small CNN on the 10-class digits (upscaled to
# 32x32, batch 32) with BatchNormGuard(check_after_steps=100) against the same fit without it,
# on the same compiled model. Fits alternate in pairs, the order flipping each pair, so that
# load changes hit both sides; the target is the median of the pairs' ratios. The guard's own
# hooks are also timed, a direct measure of what it adds.
GUARD_OVERHEAD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from bncheck.probe.runtimes.backend import import_keras
    import_keras()
    import warnings
    import keras
    import bncheck
    from sklearn.datasets import load_digits
    warnings.simplefilter("ignore", bncheck.BatchNormWarning)

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

        def on_train_end(self, logs=None):
            self._timed(super().on_train_end, logs)

    def fit(guarded):
        # "warn": a one-epoch fit may well end with stale statistics; the cost is what counts.
        guard = TimedGuard(check_after_steps=100, on_problem="warn")
        wall, cpu = time.perf_counter(), time.process_time()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, shuffle=False,
                  callbacks=[guard] if guarded else [])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if guarded:  # the guard checked, at every 100 steps and at the end, and measured the fit
            result = guard.watch.last_result
            assert result is not None and result.steps == steps and result.measured
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


# The PyTorch guard's cost: training steps of a small CNN on the 10-class digits (upscaled to
# 32x32, batch 32, one intra-op thread) inside bncheck.torch.watch(check_after_steps=100) against
# the same steps without it, on the same model. Runs alternate in pairs, the order flipping each
# pair; the target is the median of the pairs' ratios.
TORCH_GUARD_OVERHEAD = textwrap.dedent(
    """
    import json, sys, time
    import torch
    from torch import nn
    from sklearn.datasets import load_digits
    import bncheck.torch

    torch.set_num_threads(1)
    pairs, steps = int(sys.argv[1]), int(sys.argv[2])
    digits = load_digits()
    images = torch.tensor(digits.images / 16.0, dtype=torch.float32)[:, None]
    images = nn.functional.interpolate(images, size=32)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    order = order.repeat(steps * 32 // len(order) + 1)[: steps * 32]
    x, y = images[order].split(32), torch.tensor(digits.target)[order].split(32)

    torch.manual_seed(0)
    layers = []
    width_in = 1
    for width in (32, 64, 128):
        layers += [nn.Conv2d(width_in, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(), nn.MaxPool2d(2)]
        width_in = width
    model = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def run(guarded):
        guard = bncheck.torch.watch(model, on_problem="raise") if guarded else None
        model.train()
        start = time.perf_counter()
        for images, labels in zip(x, y):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if guard is not None:
                guard.step()
        elapsed = time.perf_counter() - start
        if guard is not None:
            guard.close()
            result = guard.last_result
            assert result is not None and result.steps == steps and not result.problem
        return elapsed

    run(False), run(True)  # warm-up
    runs = {False: [], True: []}
    for index in range(pairs):
        for guarded in ((False, True) if index % 2 == 0 else (True, False)):
            runs[guarded].append(run(guarded))
    print(json.dumps({"plain": runs[False], "guarded": runs[True]}))
    """
)


def torch_guard_overhead(workdir: Path, repeat: int) -> list[Target]:
    pairs = 3 * repeat
    _, out = run_python(TORCH_GUARD_OVERHEAD, str(pairs), str(GUARD_STEPS))
    runs = json.loads(out.strip().splitlines()[-1])
    plain, guarded = runs["plain"], runs["guarded"]
    pair_ratios = [g / p for p, g in zip(plain, guarded, strict=True)]
    plain_wall = statistics.median(plain)
    return [
        Target(
            "torch-guard-overhead",
            f"training steps of a small PyTorch CNN on digits 32x32, batch 32, {GUARD_STEPS} "
            "steps: inside bncheck.torch.watch(check_after_steps=100) over without (median of "
            f"{pairs} pairs)",
            ratio=statistics.median(pair_ratios),
            threshold=1.01,  # the guard's goal: at most 1% of a training step
            higher_is_better=False,
            medians={
                "step": f"{plain_wall / GUARD_STEPS * 1000:.1f} ms",
                "pair ratios": f"{min(pair_ratios):.3f} to {max(pair_ratios):.3f}",
            },
        )
    ]


# The shared measurement over the ONNX Runtime and TorchScript runners against the three plain
# passes it needs, on the same in-memory batches: inference with the stored statistics, the
# batch-statistics pass, inference with re-estimated statistics.
RUNTIME_VS_PASSES = textwrap.dedent(
    """
    import json, statistics, sys, time, warnings
    from pathlib import Path
    import numpy as np
    import onnxruntime, torch
    from torch import nn
    from bncheck.probe import measure
    from bncheck.probe.data import Batch
    from bncheck.probe.runtimes.onnx_model import OnnxRunner, _training_graph, _Session
    from bncheck.probe.runtime import STORED
    from bncheck.probe.runtimes.torchscript_model import TorchScriptRunner
    from bncheck.readers.onnx import onnx_graph

    workdir, samples, repeat = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)

    def block(inputs, outputs):
        return [nn.Conv2d(inputs, outputs, 3, padding=1, bias=False), nn.BatchNorm2d(outputs),
                nn.ReLU()]

    net = nn.Sequential(*block(3, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                        *block(64, 64), nn.MaxPool2d(2), *block(64, 128), *block(128, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10)).eval()
    onnx_path, script_path = f"{workdir}/cnn.onnx", f"{workdir}/cnn.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(2, 3, 32, 32),), onnx_path, dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}},
                          do_constant_folding=False)
    torch.jit.script(net).save(script_path)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 32)
    data = [Batch([rng.standard_normal((32, 3, 32, 32)).astype("float32")], labels)
            for _ in range(samples // 32)]
    batches = lambda: iter(data)

    def onnx_measure():
        model = onnx_graph.load(onnx_path)
        start = time.perf_counter()
        with OnnxRunner(onnxruntime, model, Path(workdir)) as runner:
            measure.measure(runner, batches, lambda layer: True, {})
        return time.perf_counter() - start

    def onnx_passes():
        model = onnx_graph.load(onnx_path)
        start = time.perf_counter()
        runner = OnnxRunner(onnxruntime, model, Path(workdir))
        [first] = runner.run(data[0].inputs, STORED)  # what the rewrite needs to know
        plain = _Session(onnxruntime, model, ["x"])
        training = _Session(onnxruntime, _training_graph(model, runner.nodes, runner._examples),
                            ["x"])
        estimated = _Session(onnxruntime, runner.with_statistics({}), ["x"])
        for session in (plain, training, estimated):
            for batch in data:
                session.run(batch.inputs)
        return time.perf_counter() - start

    def script_measure():
        module = torch.jit.load(script_path)
        start = time.perf_counter()
        with TorchScriptRunner(torch, module) as runner:
            measure.measure(runner, batches, lambda layer: True, {})
        return time.perf_counter() - start

    def script_passes():
        module = torch.jit.load(script_path)
        start = time.perf_counter()
        with torch.no_grad():
            for mode in ("eval", "train", "eval"):
                for name, child in module.named_modules():
                    if child.original_name == "BatchNorm2d":
                        child.train(mode == "train")
                for batch in data:
                    module(torch.from_numpy(batch.inputs[0]))
        return time.perf_counter() - start

    pairs = {"onnx": (onnx_measure, onnx_passes), "torchscript": (script_measure, script_passes)}
    for measured, plain in pairs.values():
        measured(), plain()  # warm-up
    times = {}
    for name, (measured, plain) in pairs.items():
        ratios, walls = [], []
        for _ in range(repeat):
            a, b = measured(), plain()
            ratios.append(a / b)
            walls.append((a, b))
        times[name] = {
            "ratio": statistics.median(ratios),
            "measure": statistics.median(w[0] for w in walls),
            "passes": statistics.median(w[1] for w in walls),
        }
    print(json.dumps(times))
    """
)

RUNTIME_SAMPLES = 1024


def runtime_cost(workdir: Path, repeat: int) -> list[Target]:
    _, out = run_python(RUNTIME_VS_PASSES, str(workdir), str(RUNTIME_SAMPLES), str(repeat))
    measured = json.loads(out.strip().splitlines()[-1])
    return [
        Target(
            f"{name}-probe-cost",
            f"a 6-BN CNN 32x32 exported from PyTorch, {RUNTIME_SAMPLES} samples in batches of 32: "
            f"the probe's measurement over the {name} runner against its three plain passes",
            ratio=figures["ratio"],
            threshold=1.2,
            higher_is_better=False,
            medians={
                "measurement": f"{figures['measure']:.2f} s",
                "three passes": f"{figures['passes']:.2f} s",
            },
        )
        for name, figures in measured.items()
    ]


BENCHMARKS: dict[str, Callable[[Path, int], list[Target]]] = {
    "static": static_vs_keras,
    "floor": static_floor,
    "formats": tensorflow_formats,
    "size": size_independence,
    "memory": large_file_memory,
    "checkpoint": checkpoint_size_independence,
    "folder": folder_scan,
    "containment": containment,
    "probe": probe_cost,
    "warm": warm_runs,
    "runtimes": runtime_cost,
    "recalibrate": recalibrate_vs_forward,
    "pytorch": pytorch_vs_torch_load,
    "guard": guard_overhead,
    "torch-guard": torch_guard_overhead,
}


def machine() -> str:
    """Cores and processor model, as ``nproc`` and ``lscpu`` give them on Linux."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if "model name" in line), ""
            )
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cores} cores" + (f", {model}" if model else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (median)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument(
        "--workdir",
        type=Path,
        help="keep the generated models here and reuse them in later runs (default: a "
        "temporary directory, removed afterwards)",
    )
    args = parser.parse_args()
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="bncheck-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        # Every timed command runs from byte-compiled modules, as an installed package does (pip
        # compiles them when it installs), whatever PYTHONDONTWRITEBYTECODE says here: the
        # commands share a bytecode cache of their own, filled by their first run.
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        os.environ["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        for name in args.only or BENCHMARKS:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            targets += BENCHMARKS[name](workdir, args.repeat)
    print(f"{'target':<22} {'ratio':>8} {'threshold':>10}  result  medians")
    for target in targets:
        sign = ">=" if target.higher_is_better else "<="
        medians = ", ".join(f"{k} {v}" for k, v in target.medians.items())
        print(
            f"{target.name:<22} {target.ratio:>8.2f} {sign + format(target.threshold, 'g'):>10}  "
            f"{'ok' if target.met else 'MISS':<6}  {medians}"
        )
        print(f"{'':<22} {target.description}")
    print(f"machine: {machine()}, Python {sys.version.split()[0]}, {sys.platform}")
    return 0 if all(t.met for t in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
