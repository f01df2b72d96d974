"""Weights-only files probed and recalibrated in the architecture ``--architecture`` names.

The network is a small CNN on the 10 digit classes, saved untrained as ``.keras`` before it is
fit (the architecture a training script has at hand), then fit briefly with BatchNorm momentum
0.999 while ``ModelCheckpoint(save_weights_only=True)`` writes its ``.weights.h5``: the moving
statistics lag far behind the weights, and the checkpoint scores near chance in inference mode.
The same weights are also saved sharded (``.weights.json``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests.conftest import CliResult

pytest.importorskip("tensorflow")

Run = Callable[..., CliResult]

#: The datasets of the checkpoint that hold moving statistics (Keras 3's layout: vars 2 and 3
#: of each BatchNormalization layer).
STATISTICS = {
    f"layers/{layer}/vars/{index}"
    for layer in ("batch_normalization", "batch_normalization_1")
    for index in (2, 3)
}


def _build(width: int, names: tuple[str, str] | None = None) -> Any:
    """The network; ``names`` names its two BatchNorm layers (Keras's defaults otherwise)."""
    import keras

    first, second = names or (None, None)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
    x = keras.layers.BatchNormalization(momentum=0.999, name=first)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(width, 3, padding="same")(x)
    x = keras.layers.BatchNormalization(momentum=0.999, name=second)(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import keras
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("architecture")
    images, labels = load_digits(return_X_y=True)
    images = (images / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    order = np.random.default_rng(0).permutation(len(images))
    train, held = order[:1400], order[1400:]
    keras.utils.set_random_seed(0)
    # Named as Keras names them in a fresh process: in one that built other layers before,
    # Keras's defaults (batch_normalization_57, ...) would name the checkpoint's layers too.
    layer_names = ("batch_normalization", "batch_normalization_1")
    model = _build(8, layer_names)
    model.save(root / "arch.keras")  # before training, as a project keeps it
    _build(12, layer_names).save(root / "wide.keras")
    # The same network, its BatchNorm layers named in the other order: Keras 3 loads weights by
    # position, so the names pair each layer with the other's statistics.
    _build(8, ("batch_normalization_1", "batch_normalization")).save(root / "swapped.keras")
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    checkpoint = keras.callbacks.ModelCheckpoint(root / "ckpt.weights.h5", save_weights_only=True)
    model.fit(
        images[train], labels[train], epochs=3, batch_size=32, verbose=0, callbacks=[checkpoint]
    )
    (root / "sharded").mkdir()
    model.save_weights(root / "sharded" / "ckpt.weights.json", max_shard_size=0.0005)
    np.savez(root / "train.npz", x=images[train], y=labels[train])
    np.savez(root / "held.npz", x=images[held], y=labels[held])
    names = ("arch.keras", "wide.keras", "swapped.keras", "ckpt.weights.h5", "train.npz")
    found = {name: root / name for name in (*names, "held.npz")}
    found["ckpt.weights.json"] = root / "sharded" / "ckpt.weights.json"
    return found


def keras_accuracy(architecture: Path, weights: Path, held: Path) -> float:
    """The held-out accuracy Keras itself gives the weights in the architecture."""
    import keras

    model = keras.models.load_model(architecture, compile=False)
    model.load_weights(weights)
    with np.load(held) as data:
        predicted = model.predict(data["x"], batch_size=64, verbose=0).argmax(axis=1)
        return float(np.mean(predicted == data["y"]))


def inspect_json(run_cli: Run, *args: object) -> tuple[int, dict[str, Any]]:
    result = run_cli("inspect", *args, "--format", "json")
    assert result.err == "", result.err
    return result.code, result.json()["models"][0]


@pytest.mark.parametrize("weights", ["ckpt.weights.h5", "ckpt.weights.json"])
def test_the_checkpoint_is_measured_in_its_architecture(
    run_cli: Run, files: dict[str, Path], weights: str
) -> None:
    code, model = inspect_json(
        run_cli, files[weights], "--architecture", files["arch.keras"], "--data", files["held.npz"]
    )
    truth = keras_accuracy(files["arch.keras"], files["ckpt.weights.h5"], files["held.npz"])
    assert truth < 0.3  # stale: the premise of the test
    probe = model["probe"]
    assert probe["skipped"] is None and probe["loader"] == "keras"
    [output] = probe["outputs"]
    metric = output["metric"]
    assert metric["name"] == "accuracy" and metric["stored"] == pytest.approx(truth, abs=1e-12)
    assert metric["reestimated"] > truth + 0.1
    found = {finding["rule"] for finding in model["findings"]}
    assert {"BN014", "BN015"} <= found and "BN024" not in found
    assert code == 1
    # The layers are named and set as the architecture's (a weights file records no momentum).
    assert [layer["path"] for layer in model["layers"]] == [
        layer["path"] for layer in probe["layers"]
    ]
    assert [layer["momentum"] for layer in model["layers"]] == [0.999, 0.999]


def test_without_its_architecture_the_checkpoint_does_not_pass(
    run_cli: Run, files: dict[str, Path]
) -> None:
    code, model = inspect_json(run_cli, files["ckpt.weights.h5"], "--data", files["held.npz"])
    assert code == 1
    assert model["probe"]["ran"] is False
    assert "pass --architecture MODEL" in model["probe"]["skipped"]
    assert [finding["rule"] for finding in model["findings"]] == ["BN024"]
    table = run_cli("inspect", files["ckpt.weights.h5"], "--data", files["held.npz"])
    assert table.code == 1 and "pass --architecture MODEL" in table.out and "BN024" in table.out


def test_weights_that_do_not_fit_are_one_line(run_cli: Run, files: dict[str, Path]) -> None:
    args = ("--architecture", files["wide.keras"], "--data", files["held.npz"])
    result = run_cli("inspect", files["ckpt.weights.h5"], *args)
    assert result.code == 3
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"bncheck: error: {files['ckpt.weights.h5']}: ")
    assert re.search(r"do not fit the --architecture model: layer conv2d_\d+ \(Conv2D\)", line)
    assert "(3, 3, 1, 12), the weights file (3, 3, 1, 8)" in line
    reported = run_cli("inspect", files["ckpt.weights.h5"], *args, "--format", "json")
    error = reported.json()["models"][0]["error"]
    assert reported.code == 3 and error.startswith("probe: ") and "\n" not in error


def test_statistics_keras_loaded_elsewhere_are_refused(
    run_cli: Run, files: dict[str, Path], tmp_path: Path
) -> None:
    """Paired by name, each layer would be judged, and written back, with the other's
    statistics: the values Keras loaded show it, and neither command goes on."""
    args = ("--architecture", files["swapped.keras"], "--data", files["train.npz"])
    probed = run_cli("inspect", files["ckpt.weights.h5"], *args)
    out = tmp_path / "never.weights.h5"
    repaired = run_cli("recalibrate", files["ckpt.weights.h5"], *args, "-o", out)
    for result in (probed, repaired):
        assert result.code == 3
        [line] = result.err.strip().splitlines()
        assert re.search(r"layer \S*batch_normalization: the moving statistics Keras loaded", line)
        assert "cannot tell where they are stored" in line
    assert not out.exists()


@pytest.mark.parametrize(
    ("architecture", "message"),
    [
        ("missing.keras", "--architecture"),
        ("ckpt.weights.h5", "not a .keras or full .h5 model"),
    ],
)
def test_an_architecture_that_is_no_model_is_a_usage_error(
    run_cli: Run, files: dict[str, Path], architecture: str, message: str
) -> None:
    path = files["arch.keras"].parent / architecture
    result = run_cli("inspect", files["ckpt.weights.h5"], "--architecture", path, "--probe")
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert message in line


def test_a_full_model_refuses_an_architecture(run_cli: Run, files: dict[str, Path]) -> None:
    for command in (("inspect", "--probe"), ("recalibrate", "--data", files["train.npz"])):
        result = run_cli(
            command[0], files["arch.keras"], "--architecture", files["arch.keras"], *command[1:]
        )
        assert result.code == 2
        [line] = result.err.strip().splitlines()
        assert "--architecture is for" in line and "weights-only file" in line


def test_recalibrate_writes_the_weights_file_verified(
    run_cli: Run, files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "fixed.weights.h5"
    result = run_cli(
        "recalibrate",
        files["ckpt.weights.h5"],
        "--architecture",
        files["arch.keras"],
        "--data",
        files["train.npz"],
        "--validate",
        files["held.npz"],
        "-o",
        out,
    )
    assert result.code == 0, result.out + result.err
    assert f"wrote {out}" in result.out
    printed = re.search(
        r"accuracy ([\d.]+)% with the stored statistics, ([\d.]+)% with the new", result.out
    )
    assert printed is not None, result.out
    # The verified accuracy is Keras's own on the held-out digits, before and after.
    before = keras_accuracy(files["arch.keras"], files["ckpt.weights.h5"], files["held.npz"])
    after = keras_accuracy(files["arch.keras"], out, files["held.npz"])
    assert printed[1] == f"{before:.1%}"[:-1] and printed[2] == f"{after:.1%}"[:-1]
    assert after > before + 0.1
    # Only the moving statistics changed: every other dataset is byte for byte the input's.
    changed = []
    with h5py.File(files["ckpt.weights.h5"], "r") as old, h5py.File(out, "r") as new:
        names: list[str] = []
        old.visititems(
            lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None
        )
        for name in names:
            if old[name][()].tobytes() != new[name][()].tobytes():
                changed.append(name)
    assert set(changed) == STATISTICS


def test_recalibrate_needs_the_architecture(
    run_cli: Run, files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "o.weights.h5"
    result = run_cli(
        "recalibrate", files["ckpt.weights.h5"], "--data", files["train.npz"], "-o", out
    )
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert "pass --architecture MODEL" in line
    assert not out.exists()


def test_recalibrate_keeps_the_weights_layout_in_the_name(
    run_cli: Run, files: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(
        "recalibrate",
        files["ckpt.weights.h5"],
        "--architecture",
        files["arch.keras"],
        "--data",
        files["train.npz"],
        "-o",
        tmp_path / "fixed.h5",
    )
    assert result.code == 2
    assert "name it .weights.h5" in result.err


def test_recalibrate_says_what_to_do_with_sharded_weights(
    run_cli: Run, files: dict[str, Path], tmp_path: Path
) -> None:
    result = run_cli(
        "recalibrate",
        files["ckpt.weights.json"],
        "--architecture",
        files["arch.keras"],
        "--data",
        files["train.npz"],
        "-o",
        tmp_path / "fixed.weights.h5",
    )
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert "save_weights to one .weights.h5 file, and recalibrate that with --architecture" in line


def test_a_misfit_names_the_layer_and_keras_s_reason() -> None:
    """Keras's message for weights that do not fit, as Keras 3.15 words a layer whose variables
    differ in number (an architecture with biases, weights without), read down to one line."""
    from bncheck.probe.runtimes.keras_model import _misfit

    message = (
        "A total of 3 objects could not be loaded. Example error message for object "
        "<Conv2D name=c1, built=True>:\n\nLayer 'c1' expected 2 variables, but received 1 "
        "variables during loading. Expected: ['kernel', 'bias']\n\nList of objects that could "
        "not be loaded:\n[<Conv2D name=c1, built=True>, <Dense name=head, built=True>]"
    )
    assert _misfit(ValueError(message)) == (
        "layer c1 (Conv2D): Layer 'c1' expected 2 variables, but received 1 variables during "
        "loading. Expected: ['kernel', 'bias']"
    )


def test_each_weights_layer_takes_its_architecture_layer_s_configuration() -> None:
    """The weights' arrays stay; where the layer sits and how it is configured come from the
    architecture's layer, matched by path here."""
    from bncheck.model import CONFIGURATION_FIELDS, BNLayer, InitialValues, ModelDescription
    from bncheck.probe.runtimes.architecture import paired

    def layer(name: str, value: float, **fields: Any) -> BNLayer:
        array = np.full(4, value, dtype="float32")
        fields.setdefault("class_name", "BatchNormalization")
        return BNLayer(f"net/{name}", name, moving_mean=array, moving_variance=array + 1, **fields)

    stored = layer("bn", 0.5, source="layers/bn/vars", locations={"moving_mean": "a/0"})
    configured = layer(
        "bn",
        9.0,
        class_name="SyncBatchNormalization",
        axis=(1,),
        momentum=0.999,
        epsilon=1e-5,
        center=False,
        scale=True,
        trainable=False,
        synchronized=True,
        initial=InitialValues(moving_variance=2.0),
        call_kwargs=({"training": True},),
    )
    weights = ModelDescription("w.weights.h5", "keras3_weights", (stored,))
    architecture = ModelDescription("net.keras", "keras3", (configured,))
    [result] = paired(weights, architecture).layers
    for name in CONFIGURATION_FIELDS:
        assert getattr(result, name) == getattr(configured, name), name
    assert result.moving_mean.tolist() == [0.5] * 4
    assert result.moving_variance.tolist() == [1.5] * 4
    assert (result.source, result.locations) == (stored.source, stored.locations)
