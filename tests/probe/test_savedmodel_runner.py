"""Exported SavedModels measured through their serving signature's BatchNorm ops, and
recalibrated into a new folder.

Two small Keras 3 CNNs are trained at test time on the 10-class digits and exported with
``model.export()``: a healthy one, and a stale one, the healthy network whose first convolution
was rescaled and shifted after its statistics were recorded (what training on after a freeze,
or editing weights, does). Every figure is held to TensorFlow's and Keras's own computation."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CliResult

pytest.importorskip("tensorflow", reason="the SavedModels are made and run with TensorFlow")

Run = Any


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import keras
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images[..., None] / 16.0).astype("float32")
    labels = digits.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(images))
    train, calibration, held_out = order[:1000], order[1000:1400], order[1400:]
    out = tmp_path_factory.mktemp("savedmodel_runner")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, name="conv1"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn1"),
            keras.layers.ReLU(),
            keras.layers.Conv2D(16, 3, name="conv2"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn2"),
            keras.layers.ReLU(),
            keras.layers.Flatten(),
            keras.layers.Dense(10, name="logits"),
            keras.layers.BatchNormalization(momentum=0.9, name="bn3"),
        ]
    )
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images[train], labels[train], batch_size=32, epochs=8, verbose=0)
    model.export(str(out / "healthy"), verbose=False)
    model.save(out / "healthy.keras")
    kernel, bias = model.get_layer("conv1").get_weights()
    model.get_layer("conv1").set_weights([kernel * 4.0, bias + 1.0])
    model.export(str(out / "stale"), verbose=False)
    model.save(out / "stale.keras")
    for name, rows in (("calibration", calibration), ("held_out", held_out)):
        np.savez(out / f"{name}.npz", x=images[rows], y=labels[rows])
    return {"out": out, "model": model}


def served(folder: Path, images: np.ndarray) -> np.ndarray:
    """The export's outputs as TensorFlow serves them."""
    import tensorflow as tf

    function = tf.saved_model.load(str(folder)).signatures["serving_default"]
    [name] = function.structured_input_signature[1]
    [values] = function(**{name: tf.constant(images)}).values()
    return np.asarray(values)


def accuracy(folder: Path, data: Path) -> float:
    arrays = np.load(data)
    return float(np.mean(served(folder, arrays["x"]).argmax(1) == arrays["y"]))


def inspect(run_cli: Run, model: Path, data: Path) -> tuple[int, dict[str, Any]]:
    result = run_cli("inspect", model, "--data", data, "--format", "json")
    assert result.err == "", result.err
    return result.code, result.json()["models"][0]


def test_stored_outputs_are_the_serving_signature_s_bit_for_bit(
    exported: dict[str, Any],
) -> None:
    from bncheck.probe.runtime import ESTIMATED, STORED, TRAINING
    from bncheck.probe.runtimes import savedmodel_runner
    from bncheck.readers import read_model

    folder = exported["out"] / "stale"
    images = np.load(exported["out"] / "held_out.npz")["x"][:64]
    runner, specs = savedmodel_runner.open_runner(str(folder), read_model(str(folder)))
    assert [layer.path for layer in runner.layers] == [
        layer.path for layer in read_model(str(folder)).layers
    ]
    with runner:
        stored, training = runner.run([images], STORED, TRAINING)
        runner.use_estimates(
            {layer.path: (layer.moving_mean, layer.moving_variance) for layer in runner.layers}
        )
        [same] = runner.run([images], ESTIMATED)
    assert stored.outputs[0][1].tobytes() == served(folder, images).tobytes()
    assert same.outputs[0][1].tobytes() == stored.outputs[0][1].tobytes()
    # The batch-statistics pass is Keras's own training-mode forward pass (no layer but
    # BatchNorm changes with the mode), on a copy so the moving statistics stay as they are.
    import keras

    model = exported["model"]
    twin = keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(
        training.outputs[0][1], np.asarray(twin(images, training=True)), rtol=1e-4, atol=1e-4
    )
    # Each op's moments are its input's batch moments over every axis but the channels.
    conv1 = keras.Model(model.inputs, model.get_layer("conv1").output)
    x = np.asarray(conv1(images), dtype=np.float64)
    [first] = [m for m in training.moments if m.path == runner.layers[0].path]
    np.testing.assert_allclose(first.mean, x.mean((0, 1, 2)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(first.variance, x.var((0, 1, 2)), rtol=1e-3, atol=1e-6)
    assert (first.samples, first.values) == (64, 64 * 6 * 6)
    # Nothing the passes did stayed in the model.
    again = runner.run([images], STORED)[0]
    assert again.outputs[0][1].tobytes() == stored.outputs[0][1].tobytes()


def test_a_stale_export_is_found_stale_and_its_repair_measured(
    run_cli: Run, exported: dict[str, Any]
) -> None:
    out = exported["out"]
    code, model = inspect(run_cli, out / "stale", out / "held_out.npz")
    probe = model["probe"]
    assert probe["loader"] == "Keras export SavedModel"
    assert [layer["path"] for layer in probe["layers"]] == [
        layer["path"] for layer in model["layers"]
    ]
    metric = probe["outputs"][0]["metric"]
    assert metric["stored"] == pytest.approx(accuracy(out / "stale", out / "held_out.npz"))
    # The truth: bncheck's Keras probe of the same network, run by Keras in training mode.
    _, reference = inspect(run_cli, out / "stale.keras", out / "held_out.npz")
    truth = reference["probe"]["outputs"][0]["metric"]
    assert metric["stored"] == pytest.approx(truth["stored"], abs=0.002)
    assert metric["reestimated"] == pytest.approx(truth["reestimated"], abs=0.03)
    assert metric["reestimated"] > metric["stored"] + 0.1
    findings = {finding["rule"]: finding for finding in model["findings"]}
    assert {"BN014", "BN015"} <= set(findings) and code == 1
    assert "bncheck recalibrate" in findings["BN015"]["message"]


def test_a_healthy_export_passes(run_cli: Run, exported: dict[str, Any]) -> None:
    out = exported["out"]
    code, model = inspect(run_cli, out / "healthy", out / "held_out.npz")
    assert model["probe"]["modes"] == ["inference", "training"]
    assert len(model["probe"]["layers"]) == 3
    judged = [f for f in model["findings"] if f["rule"] in ("BN014", "BN015")]
    assert [f for f in judged if f["severity"] in ("warning", "error")] == []
    metric = model["probe"]["outputs"][0]["metric"]
    assert metric["stored"] == pytest.approx(accuracy(out / "healthy", out / "held_out.npz"))
    assert code == 0


def recalibrated(run_cli: Run, out: Path, model: Path, target: Path) -> CliResult:
    return run_cli(
        "recalibrate",
        model,
        "--data",
        out / "calibration.npz",
        "--validate",
        out / "held_out.npz",
        "-o",
        target,
    )


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_recalibrating_a_stale_export_writes_a_new_folder_serving_what_was_verified(
    run_cli: Run, exported: dict[str, Any]
) -> None:
    out = exported["out"]
    before = digest(out / "stale")
    target = out / "repaired"
    result = recalibrated(run_cli, out, out / "stale", target)
    assert result.code == 0, result.err
    found = re.search(
        r"accuracy ([0-9.]+)% with the stored statistics, ([0-9.]+)% with the", result.out
    )
    assert found is not None, result.out
    stored, after = float(found.group(1)) / 100, float(found.group(2)) / 100
    assert stored == pytest.approx(accuracy(out / "stale", out / "held_out.npz"), abs=0.0006)
    assert accuracy(target, out / "held_out.npz") == pytest.approx(after, abs=0.0006)
    assert after > stored + 0.1
    assert digest(out / "stale") == before
    # Only the variables bundle changed, and the fingerprint's hash of it.
    written = digest(target)
    assert sorted(written) == sorted(before)
    assert {name for name in before if written[name] != before[name]} <= {
        "variables/variables.index",
        "fingerprint.pb",
        *(name for name in before if name.startswith("variables/variables.data")),
    }
    # OUT is a new folder, never one that exists.
    again = recalibrated(run_cli, out, out / "stale", target)
    assert again.code == 2 and len(again.err.splitlines()) == 1
    assert "a SavedModel is written to a new folder OUT" in again.err


def test_an_export_whose_graph_cannot_be_rewritten_is_measured_by_its_outputs(
    run_cli: Run, exported: dict[str, Any], tmp_path: Path
) -> None:
    """Augmentation layers inside a model leave random-number state in its export that the
    serving graph assigns, so TensorFlow cannot freeze it to rewrite its BatchNorm ops. The
    probe measures what the signature serves instead, says why, and says that the export draws
    random numbers at inference, as this one does: its static report is kept (no exit 3)."""
    import keras

    trained = exported["model"]
    augmented = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.RandomFlip("horizontal", seed=1), trained]
    )
    augmented.export(str(tmp_path / "augmented"), verbose=False)
    code, model = inspect(run_cli, tmp_path / "augmented", exported["out"] / "held_out.npz")
    assert code != 3 and model["error"] is None
    assert len(model["layers"]) == 3  # the static report is kept
    notes = " ".join(model["probe"]["notes"])
    assert "cannot freeze it" in notes
    images = np.load(exported["out"] / "held_out.npz")["x"][:8]
    first, second = (served(tmp_path / "augmented", images) for _ in "ab")
    if not np.array_equal(first, second):  # the export applies its augmentation when served
        assert "draws random numbers at inference" in notes
