"""`bncheck inspect --probe` on models trained to show each failure, in-process."""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from bncheck.probe.data import Batch
from tests.conftest import FIXTURES, CliResult, user_module
from tests.hardening.canaries import lambda_bytecode_canaries

Run = Callable[..., CliResult]
PROBE = FIXTURES / "probe"
DIGITS = FIXTURES / "data/digits_0_1.npy"


def report(run_cli: Run, *args: object) -> tuple[int, dict[str, Any]]:
    result = run_cli("inspect", *args, "--format", "json")
    assert result.err == "", result.err
    return result.code, result.json()["models"][0]


def rules(model: dict[str, Any]) -> list[tuple[str, str | None]]:
    return sorted((f["rule"], f["layer"]) for f in model["findings"])


def relative_spread(values: np.ndarray) -> float:
    flat = values.reshape(len(values), -1).astype(np.float64)
    return float(flat.std(axis=0).mean() / np.sqrt(np.mean(flat**2)))


def test_untouched_statistics_collapse_and_the_first_collapsing_layer_is_named(
    run_cli: Run,
) -> None:
    code, model = report(run_cli, PROBE / "no_training_flag.keras", "--probe")
    assert code == 1
    found = rules(model)
    assert [rule for rule, _ in found].count("BN001") == 20
    [collapse] = [f for f in model["findings"] if f["rule"] == "BN013"]
    assert "nearly identical for every input" in collapse["message"]

    # An independent look at the same synthetic batch: each BN layer's output across the batch,
    # in inference mode and in training mode.
    deep = keras.models.load_model(PROBE / "no_training_flag.keras", compile=False)
    taps = keras.Model(deep.inputs, [deep.get_layer(f"bn{i}").output for i in range(1, 21)])
    batch = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype("float32")
    inference = [relative_spread(a.numpy()) for a in taps(batch, training=False)]
    training = [relative_spread(a.numpy()) for a in taps(batch, training=True)]
    ratios = [i / t for i, t in zip(inference, training, strict=True)]
    first = next(index for index, ratio in enumerate(ratios) if ratio <= 0.01)
    assert collapse["layer"] == f"deep/bn{first + 1}"
    assert first >= 5, "the signal fades with depth, not at once"
    details = collapse["details"]
    assert details["first_layer_inference_spread"] == pytest.approx(inference[first], rel=1e-3)
    assert details["first_layer_training_spread"] == pytest.approx(training[first], rel=1e-3)
    assert details["inference_spread"] < 1e-4 < details["training_spread"]


def test_statistics_recomputed_over_the_data_are_clean(run_cli: Run) -> None:
    code, model = report(run_cli, PROBE / "recalibrated.keras", "--data", DIGITS)
    assert code == 0
    assert model["findings"] == []
    probe = model["probe"]
    available = len(np.load(DIGITS))
    data = probe["data"]
    # Every sample of the data, up to --samples, the short last batch too: not one batch of 32.
    assert data["real"] is True and data["available"] == available
    assert data["samples"] == available and data["batches"] == -(-available // 32)
    assert probe["modes"] == ["inference", "training"]
    assert [layer["path"] for layer in probe["layers"]] == ["cnn/bn1", "cnn/bn2", "cnn/bn3"]
    assert all(layer["population"]["batches"] == data["batches"] for layer in probe["layers"])
    assert probe["outputs"][0]["reestimated_top1_agreement"] == 1.0


def test_samples_caps_the_data(run_cli: Run) -> None:
    _, model = report(run_cli, PROBE / "recalibrated.keras", "--data", DIGITS, "--samples", 100)
    data = model["probe"]["data"]
    assert (data["samples"], data["batches"], data["batch_size"]) == (100, 4, 32)


def test_briefly_trained_model_has_stale_statistics(run_cli: Run) -> None:
    code, model = report(run_cli, PROBE / "stale_stats.keras", "--data", DIGITS)
    assert code == 1
    stale = {layer for rule, layer in rules(model) if rule == "BN014"}
    assert stale == {"cnn/bn1", "cnn/bn2", "cnn/bn3"}
    [effect] = [f for f in model["findings"] if f["rule"] == "BN015"]
    assert "change the top-1 class" in effect["message"]
    severe = [f for f in model["findings"] if f["rule"] == "BN014" and f["severity"] == "error"]
    assert severe, "variance factors above 8 escalate"
    assert all(f["details"]["variance_factor"] > 8 for f in severe)


def test_synthetic_data_does_not_judge_staleness(run_cli: Run) -> None:
    result = run_cli("inspect", PROBE / "stale_stats.keras", "--probe")
    assert result.code == 0
    assert "synthetic data (standard normal, seed 0)" in result.out
    assert "staleness (BN014) and what recalibrating would change (BN015) need real" in (result.out)
    assert "BN014 stale" not in result.out and "BN015 recal" not in result.out


def test_a_training_call_in_the_graph_is_judged_as_predict_runs_it(run_cli: Run) -> None:
    """``bn(x, training=True)`` in a functional graph: ``model.predict`` (``training=False``)
    overrides it, so no sample depends on its batch there; BN010 names the call statically."""
    path = FIXTURES / "keras3/training_call.keras"
    code, model = report(run_cli, path, "--probe")
    assert code == 1
    assert ("BN010", "cnn/bn1") in rules(model)
    assert not [f for f in model["findings"] if f["rule"] == "BN016"]
    loaded = keras.models.load_model(path, compile=False)
    batch = np.random.default_rng(0).standard_normal((32, 8, 8, 1)).astype("float32")
    alone = loaded.predict(batch[:16], batch_size=16, verbose=0)
    within = loaded.predict(batch, batch_size=32, verbose=0)[:16]
    assert np.array_equal(alone, within)
    assert model["probe"]["outputs"][0]["batch_dependence"] < 1e-5
    # A healthy model is not batch dependent, to float round-off.
    _, healthy = report(run_cli, FIXTURES / "keras3/healthy_cnn.keras", "--probe")
    assert healthy["probe"]["outputs"][0]["batch_dependence"] < 1e-5


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_probe_never_changes_the_model(run_cli: Run, tmp_path: Path) -> None:
    from bncheck.probe import measure
    from bncheck.probe.runtimes import keras_model

    model_path = tmp_path / "stale.keras"
    model_path.write_bytes((PROBE / "stale_stats.keras").read_bytes())
    before = (digest(model_path), model_path.stat().st_mtime_ns, sorted(tmp_path.iterdir()))
    assert run_cli("inspect", model_path, "--data", DIGITS).code == 1
    assert (digest(model_path), model_path.stat().st_mtime_ns, sorted(tmp_path.iterdir())) == before

    model = keras_model.load_model(str(model_path), unsafe=False, custom_objects={})
    batch = [np.load(DIGITS)[:32]]
    values = [np.array(variable.numpy()) for variable in model.variables]
    bn_arrays = {
        f"{path}/{variable.name}": np.array(variable.numpy())
        for path, layer in keras_model.batchnorm_layers(model)
        for variable in layer.weights
    }
    measured = measure.measure_keras(
        model, lambda: [Batch(batch)] * 3, lambda _, __: True, untouched={}
    )
    assert measured.modes == ("inference", "training")
    # Inference mode with the stored statistics did not drift as training mode ran.
    drift = measured.outputs[0].reestimated_relative_error
    assert drift is not None and drift > 0.1
    for path, layer in keras_model.batchnorm_layers(model):
        for variable in layer.weights:
            assert np.array_equal(variable.numpy(), bn_arrays[f"{path}/{variable.name}"])
    assert all(
        np.array_equal(variable.numpy(), value)
        for variable, value in zip(model.variables, values, strict=True)
    )
    # The premise: a training-mode call does move the statistics.
    model(batch[0], training=True)
    assert not np.array_equal(
        model.get_layer("bn1").moving_mean.numpy(), bn_arrays["cnn/bn1/moving_mean"]
    )


def test_multi_input_model_takes_an_npz(run_cli: Run, tmp_path: Path) -> None:
    images = np.load(DIGITS)
    data = tmp_path / "inputs.npz"
    np.savez(data, image=images, rows=images[..., 0])
    _, model = report(run_cli, FIXTURES / "keras3/nested.keras", "--data", data)
    probe = model["probe"]
    assert probe["data"]["inputs"] == [
        {"name": "image", "shape": [32, 8, 8, 1]},
        {"name": "rows", "shape": [32, 8, 8]},
    ]
    # The probe names layers as the static reader does, through nested models and wrappers.
    assert sorted(layer["path"] for layer in probe["layers"]) == sorted(
        layer["path"] for layer in model["layers"]
    )
    np.save(tmp_path / "one.npy", images)
    result = run_cli("inspect", FIXTURES / "keras3/nested.keras", "--data", tmp_path / "one.npy")
    assert result.code == 2
    assert result.err.strip().endswith("pass an .npz file with one array per input name")


@pytest.mark.parametrize("fixture", ["stale_stats.h5", "keras2_stale.h5"])
def test_legacy_h5_files_are_probed(run_cli: Run, fixture: str) -> None:
    code, model = report(run_cli, PROBE / fixture, "--data", DIGITS)
    assert code == 1
    assert model["probe"]["loader"] == "keras"
    assert {rule for rule, _ in rules(model)} >= {"BN014", "BN015"}


def test_tf_keras_savedmodel_is_measured_layer_by_layer(run_cli: Run) -> None:
    code, model = report(run_cli, PROBE / "tf_keras_savedmodel", "--data", DIGITS)
    probe = model["probe"]
    assert probe["loader"] == "tf-keras SavedModel"
    assert probe["modes"] == ["inference", "training"]
    # Its serving graph's BatchNorm ops carry the layer paths of the static report.
    assert sorted(layer["path"] for layer in probe["layers"]) == sorted(
        layer["path"] for layer in model["layers"]
    )
    assert probe["outputs"][0]["reestimated_relative_error"] is not None
    assert code == (1 if any(r == "BN014" for r, _ in rules(model)) else 0)


def test_a_stale_keras3_export_is_found_stale(run_cli: Run) -> None:
    code, model = report(run_cli, PROBE / "stale_stats_export", "--data", DIGITS)
    probe = model["probe"]
    assert probe["loader"] == "Keras export SavedModel"
    assert probe["modes"] == ["inference", "training"]
    assert probe["outputs"][0]["batch_dependence"] < 1e-5
    assert "BN014" in {rule for rule, _ in rules(model)}
    assert code == 1


def test_code_in_a_model_file_never_runs_without_unsafe(run_cli: Run, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    paths = lambda_bytecode_canaries(tmp_path, canary)
    for path in paths:
        result = run_cli("inspect", path, "--probe", "--format", "json")
        assert not canary.exists(), path
        model = result.json()["models"][0]
        assert model["probe"]["ran"] is False
        assert "pass --unsafe" in model["probe"]["skipped"]
        [skipped] = [f for f in model["findings"] if f["rule"] == "BN017"]
        assert skipped["details"]["references"][0]["kind"] == "lambda"
        # The check that was asked for did not run: a CI gate must not pass.
        assert (skipped["severity"], result.code) == ("error", 1)
    # The canary works: with --unsafe the same file does run.
    for path in paths:
        result = run_cli("inspect", path, "--probe", "--unsafe", "--format", "json")
        assert canary.exists(), path
        model = result.json()["models"][0]
        assert model["probe"]["ran"] is True
        [ran] = [f for f in model["findings"] if f["rule"] == "BN017"]
        assert ran["severity"] == "warning"
        canary.unlink()


def test_custom_objects_file_lets_the_probe_run(run_cli: Run) -> None:
    _, skipped = report(run_cli, PROBE / "custom_layer.keras", "--probe")
    assert "--custom-objects" in skipped["probe"]["skipped"]
    custom = FIXTURES / "custom_layer.py"
    _, ran = report(run_cli, PROBE / "custom_layer.keras", "--probe", "--custom-objects", custom)
    assert ran["probe"]["ran"] is True
    assert ran["findings"] == []


def test_unknown_dimensions_need_an_input_shape(run_cli: Run, tmp_path: Path) -> None:
    inputs = keras.Input((None, None, 1), name="image")
    x = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(2, 3)(inputs))
    path = tmp_path / "open.keras"
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="open").save(path)
    result = run_cli("inspect", path, "--probe")
    assert result.code == 2
    assert result.err == (
        "bncheck: error: input 'image' (None, None, None, 1) float32 has unknown dimensions: "
        "pass --input-shape image=D1,D2,... or real data with --data\n"
    )
    code, model = report(run_cli, path, "--probe", "--input-shape", "image=12,12,1")
    assert code == 0
    assert model["probe"]["data"]["inputs"] == [{"name": "image", "shape": [32, 12, 12, 1]}]


def test_model_keras_cannot_load_is_unreadable(run_cli: Run, tmp_path: Path) -> None:
    source = FIXTURES / "keras3/healthy_cnn.keras"
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][1]["class_name"] = "NoSuchLayer"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(broken, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    result = run_cli("inspect", broken, "--probe")
    assert result.code == 3
    [line] = result.err.strip().splitlines()
    assert line.startswith(f"bncheck: error: {broken}: probe: Keras cannot load the model (")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "8"], "--batch-size only applies with --probe or --data"),
        (["--unsafe"], "--unsafe only applies with --probe or --data"),
        (["--data", "missing.npy"], "--data missing.npy: no such file"),
        (["--probe", "--custom-objects", "missing.py"], "--custom-objects missing.py: no such"),
        (["--probe", "--input-shape", "8,x"], "--input-shape '8,x'"),
        (["--probe", "--input-shape", "imgae=8,8,1"], "no input named 'imgae' (its inputs: "),
    ],
)
def test_probe_usage_errors(run_cli: Run, args: list[str], message: str) -> None:
    result = run_cli("inspect", FIXTURES / "keras3/healthy_cnn.keras", *args)
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert message in line


def test_failing_custom_objects_file_is_one_line(run_cli: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('nope')\n")
    result = run_cli("inspect", PROBE / "custom_layer.keras", "--probe", "--custom-objects", bad)
    assert result.code == 2
    assert result.err == (
        f"bncheck: error: --custom-objects {bad} failed (RuntimeError: nope; bad.py line 1)\n"
    )


def test_weights_only_file_without_its_architecture_fails_the_probe(run_cli: Run) -> None:
    code, model = report(run_cli, FIXTURES / "weights/healthy_cnn.weights.h5", "--probe")
    assert code == 1
    assert model["probe"]["skipped"].startswith(
        "a weights-only file holds no architecture to run: pass --architecture MODEL"
    )
    assert [(f["rule"], f["severity"]) for f in model["findings"]] == [("BN024", "error")]


SUBCLASSED = """
import keras


@keras.saving.register_keras_serializable(package="tests")
class Small(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3)
        self.bn = keras.layers.BatchNormalization()
        self.pool = keras.layers.GlobalAveragePooling2D()

    def call(self, x, training=None):
        return self.pool(self.bn(self.conv(x), training=training))
"""


def test_subclassed_model_takes_its_input_shape_from_the_data(run_cli: Run, tmp_path: Path) -> None:
    source = tmp_path / "small.py"
    model = user_module(source, SUBCLASSED).Small()
    model(np.zeros((2, 8, 8, 1), "float32"))
    path = tmp_path / "small.keras"
    model.save(path)
    _, skipped = report(run_cli, path, "--probe")
    assert "--custom-objects" in skipped["probe"]["skipped"]
    result = run_cli("inspect", path, "--probe", "--custom-objects", source)
    assert result.code == 2
    assert "declares no inputs (a subclassed model)" in result.err
    _, ran = report(run_cli, path, "--data", DIGITS, "--custom-objects", source, "--samples", 64)
    assert ran["probe"]["data"]["inputs"] == [{"name": "input", "shape": [32, 8, 8, 1]}]
    assert len(ran["probe"]["layers"]) == 1


def test_checkpoint_cannot_be_probed(tmp_path: Path) -> None:
    from bncheck.probe.options import ProbeOptions
    from bncheck.probe.runner import run_probe

    (tmp_path / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    result = run_probe(str(tmp_path), ProbeOptions(), lambda _: None)
    assert result.skipped == "a checkpoint holds no architecture to run"


def test_fewer_samples_than_a_batch_are_one_batch_of_them(run_cli: Run) -> None:
    _, model = report(run_cli, PROBE / "recalibrated.keras", "--data", DIGITS, "--samples", 10)
    data = model["probe"]["data"]
    assert (data["samples"], data["batches"], data["batch_size"]) == (10, 1, 10)
    assert any(
        "one batch: the noise of its statistics is unknown" in note
        for note in (model["probe"]["notes"])
    )


def test_whole_numbers_for_a_float_input_get_a_note(run_cli: Run, tmp_path: Path) -> None:
    pixels = tmp_path / "pixels.npy"
    np.save(pixels, np.round(np.load(DIGITS) * 255).astype("uint8"))
    _, model = report(run_cli, PROBE / "recalibrated.keras", "--data", pixels, "--samples", 64)
    assert any("gives input(s) image whole numbers" in note for note in model["probe"]["notes"])


def test_a_tf_keras_archive_keras_3_cannot_load_says_what_to_save_instead(
    run_cli: Run, tmp_path: Path
) -> None:
    """tf.keras writes .keras archives too; Keras 3 fails on its configurations, and the error
    names the writer and the format that loads."""
    import tf_keras

    model = tf_keras.Sequential(
        [tf_keras.layers.Dense(4, input_shape=(3,)), tf_keras.layers.BatchNormalization()]
    )
    path = tmp_path / "tfk.keras"
    model.save(path)
    result = run_cli("inspect", path, "--probe")
    assert result.code == 3
    [line] = result.err.strip().splitlines()
    assert "Keras cannot load the model" in line
    assert "written by tf.keras 2." in line and "save the model with tf_keras as .h5" in line
    # A Keras 3 archive that fails to load gets no such hint.
    assert "tf.keras" not in keras_3_load_error(tmp_path)


def keras_3_load_error(tmp_path: Path) -> str:
    """The load error of a Keras 3 archive whose configuration names a class nobody
    registered (not even another test of this session)."""
    from bncheck.errors import ModelReadError
    from bncheck.probe.runtimes.keras_model import load_model

    source, target = PROBE / "stale_stats.keras", tmp_path / "unknown_class.keras"
    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(target, "w") as out:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "config.json":
                data = data.replace(b'"BatchNormalization"', b'"NeverRegisteredLayer"', 1)
            out.writestr(info, data)
    try:
        load_model(str(target), unsafe=False, custom_objects={})
    except ModelReadError as exc:
        return str(exc)
    raise AssertionError("a class nobody registered loaded")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_probe_runs_keras_on_tensorflow_whatever_keras_backend_says(
    run_cli: Run, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    """``KERAS_BACKEND`` set for the user's own code (to a backend that is not installed, or
    that cannot run the probe's TensorFlow passes) leaves the probe as it is."""
    model = FIXTURES / "calibration" / "stale_cnn.keras"
    data = FIXTURES / "calibration" / "digits_train.npz"
    expected = report(run_cli, model, "--data", data)
    monkeypatch.setenv("KERAS_BACKEND", backend)
    assert report(run_cli, model, "--data", data) == expected
    assert expected[0] == 1 and expected[1]["probe"]["ran"]
