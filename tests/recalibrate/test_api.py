"""`bncheck.recalibrate` from Python: files and live models, any data, the command's
verification, and nothing written unless asked."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import bncheck
from bncheck.errors import UsageError
from bncheck.probe.runtimes import keras_model
from bncheck.readers import read_model
from bncheck.recalibrate.results import FROZEN, RECALIBRATED, Recalibration, Verification
from tests.conftest import FIXTURES

STALE = FIXTURES / "probe/stale_stats.keras"
X = np.load(FIXTURES / "data/digits_0_1.npy")
Y = np.load(FIXTURES / "data/digits_0_1_labels.npy")
CALIBRATION = FIXTURES / "calibration"


@pytest.fixture(autouse=True)
def in_empty_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs in an empty folder, which holds nothing afterwards unless asked."""
    monkeypatch.chdir(tmp_path)
    yield


def moving(model: keras.Model) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        path: (layer.moving_mean.numpy().copy(), layer.moving_variance.numpy().copy())
        for path, layer in keras_model.batchnorm_layers(model)
    }


def in_file(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        layer.path: (layer.moving_mean, layer.moving_variance)
        for layer in read_model(str(path)).layers
    }


def verified(result: Recalibration) -> Verification:
    """The verification of a recalibration that measured one."""
    assert result.verification is not None
    return result.verification


def measured(result: Recalibration) -> tuple[str, float, float]:
    """The labelled metric of a recalibration verified on labelled data: its name, with the
    stored statistics and with the re-estimated ones."""
    metric = verified(result).metric
    assert metric is not None and metric.reestimated is not None
    return metric.name, metric.stored, metric.reestimated


def assert_statistics(
    found: dict[str, tuple[np.ndarray, np.ndarray]], result: Recalibration
) -> None:
    assert set(found) >= set(result.statistics)
    for path, population in result.statistics.items():
        np.testing.assert_allclose(found[path][0], population.mean, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(found[path][1], population.variance, rtol=1e-6)


def test_a_live_model_on_a_dataset_is_measured_and_left_alone(tmp_path: Path) -> None:
    model = keras.models.load_model(STALE, compile=False)
    before = moving(model)
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(50)
    result = bncheck.recalibrate(model, dataset)
    assert isinstance(result, Recalibration)
    assert (result.batches, result.samples) == (12, 360)
    assert [change.status for change in result.layers] == [RECALIBRATED] * 3
    name, stored, reestimated = measured(result)
    assert name == "accuracy" and stored < 0.75 and reestimated > 0.99
    assert result.refusal is None and result.written_to is None
    assert result.exit_code == 1  # nothing written
    for path, (mean, variance) in moving(model).items():
        assert np.array_equal(mean, before[path][0]) and np.array_equal(variance, before[path][1])
    assert list(tmp_path.iterdir()) == []


def test_every_form_of_data_gives_the_same_statistics() -> None:
    """In one batch of every sample, the order of the data cannot matter."""
    model = keras.models.load_model(STALE, compile=False)
    forms = {
        "arrays": (X, Y),
        "dict": {"image": X, "y": Y},
        "dataset": tf.data.Dataset.from_tensor_slices((X, Y)).batch(64),
        "list of batches": [(X[i : i + 100], Y[i : i + 100]) for i in range(0, 360, 100)],
        "samples": [(image, label) for image, label in zip(X, Y, strict=True)],
        "path": FIXTURES / "data/digits_0_1.npy",
    }
    results = {
        name: bncheck.recalibrate(model, data, batch_size=360) for name, data in forms.items()
    }
    reference = results.pop("arrays")
    assert reference.samples == 360
    for name, result in results.items():
        assert result.samples == 360, name
        assert_statistics(
            {path: (pop.mean, pop.variance) for path, pop in reference.statistics.items()}, result
        )
        assert (verified(result).metric is None) == (name == "path"), name


def test_in_place_and_output_for_a_live_model(tmp_path: Path) -> None:
    model = keras.models.load_model(STALE, compile=False)
    before = moving(model)
    saved = bncheck.recalibrate(model, (X, Y), output=tmp_path / "fixed.keras")
    assert saved.written_to == str(tmp_path / "fixed.keras") and saved.exit_code == 0
    assert_statistics(in_file(tmp_path / "fixed.keras"), saved)
    assert all(np.array_equal(moving(model)[path][0], before[path][0]) for path in before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.keras"]

    changed = bncheck.recalibrate(model, (X, Y), in_place=True)
    assert changed.written_to == model.name
    assert_statistics(moving(model), changed)
    assert_statistics(moving(model), saved)


def test_a_model_file_is_written_only_when_asked(tmp_path: Path) -> None:
    model = tmp_path / "model.keras"
    model.write_bytes(STALE.read_bytes())
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    measured = bncheck.recalibrate(model, (X, Y))
    assert measured.written_to is None and measured.model == str(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]

    out = tmp_path / "fixed.keras"
    written = bncheck.recalibrate(str(model), (X, Y), output=out)
    assert written.written_to == str(out)
    assert_statistics(in_file(out), written)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == digest
    with pytest.raises(UsageError, match="refusing to overwrite"):
        bncheck.recalibrate(model, (X, Y), output=model)
    bncheck.recalibrate(model, (X, Y), in_place=True)
    assert hashlib.sha256(model.read_bytes()).hexdigest() != digest


def test_the_verification_rules_hold_in_the_api(tmp_path: Path) -> None:
    """A network that learned with its initial statistics keeps them; forced to take new ones,
    the held-out accuracy falls, so nothing is written unless ``force``."""
    model = CALIBRATION / "no_training_flag_small.keras"
    held_out = CALIBRATION / "digits_test.npz"
    train = CALIBRATION / "digits_train.npz"
    kept = bncheck.recalibrate(model, train, validate=held_out, output=tmp_path / "a.keras")
    assert kept.verification is None
    assert kept.refusal == "all 3 BatchNorm layers keep their statistics"
    worse = bncheck.recalibrate(
        model, train, validate=held_out, include_untouched=True, output=tmp_path / "b.keras"
    )
    assert verified(worse).held_out
    _, stored, reestimated = measured(worse)
    assert reestimated < stored
    assert worse.refusal is not None and worse.refusal.startswith("accuracy on ")
    assert worse.written_to is None and list(tmp_path.iterdir()) == []
    forced = bncheck.recalibrate(
        model, train, validate=held_out, include_untouched=True, force=True,
        output=tmp_path / "c.keras",
    )  # fmt: skip
    assert forced.written_to == str(tmp_path / "c.keras")

    frozen = bncheck.recalibrate(FIXTURES / "probe/stale_frozen_bn1.keras", (X, Y))
    statuses = {change.path: change.status for change in frozen.layers}
    assert statuses["cnn/bn1"] == FROZEN and "cnn/bn1" not in frozen.statistics
    assert statuses["cnn/bn2"] == RECALIBRATED


def test_an_iterator_needs_held_out_data_to_verify_on() -> None:
    model = keras.models.load_model(STALE, compile=False)

    def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, 360, 40):
            yield X[start : start + 40], Y[start : start + 40]

    with pytest.raises(UsageError, match="is an iterator, which can be read only once"):
        bncheck.recalibrate(model, batches())
    result = bncheck.recalibrate(model, batches(), validate=(X, Y))
    assert result.samples == 360 and verified(result).held_out


def test_mistakes_are_usage_errors(tmp_path: Path) -> None:
    model = keras.models.load_model(STALE, compile=False)
    cases = [
        ({"data": (X, Y), "output": tmp_path / "o.keras", "in_place": True}, "not both"),
        ({"data": X[:, :4]}, "does not fit input 'image'"),
        ({"data": (X, Y), "validate": X}, "validate has no labels"),
        ({"data": (X, Y), "output": tmp_path / "no/such/o.keras"}, "no such directory"),
        ({"data": "missing.npy"}, "data missing.npy: no such file or directory"),
        ({"data": 7}, r"data \(int\) is a int: give arrays"),
    ]
    for arguments, message in cases:
        with pytest.raises(UsageError, match=message):
            bncheck.recalibrate(model, **arguments)
    for other in ("probe/tf_keras_savedmodel", "pytorch/healthy.onnx"):
        path = FIXTURES / other
        with pytest.raises(UsageError) as raised:
            bncheck.recalibrate(path, (X, Y), output=tmp_path / "out")
        assert str(raised.value).startswith(
            f"{path}: bncheck.recalibrate runs Keras models (.keras, .h5, or a live model); "
            f"recalibrate a {'savedmodel' if 'saved' in other else 'onnx'} input with the "
            f"command line, bncheck recalibrate {path}"
        )
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with pytest.raises(UsageError, match=r"not created under strategy.scope\(\)"):
        bncheck.recalibrate(model, (X, Y), strategy=strategy)
    assert list(tmp_path.iterdir()) == []


IMPORTS = """
import sys
import bncheck
heavy = [m for m in sys.modules if m.split(".")[0] in ("numpy", "tensorflow", "keras", "h5py")]
import bncheck.recalibrate.command, bncheck.recalibrate.write
print(heavy, callable(bncheck.recalibrate), bncheck.recalibrate.__module__)
"""


def test_bncheck_recalibrate_is_the_function_and_costs_nothing_to_import() -> None:
    def run(code: str) -> str:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert run(IMPORTS) == "[] True bncheck.recalibrate.api"
    # The subpackage of the same name imported first does not take the name either.
    assert run("import bncheck.recalibrate.options\n" + IMPORTS).endswith(
        "True bncheck.recalibrate.api"
    )


def test_a_missing_model_file_is_named_in_the_error(tmp_path: Path) -> None:
    from bncheck.errors import ModelReadError

    missing = tmp_path / "nope.keras"
    with pytest.raises(ModelReadError, match=r"nope\.keras: "):
        bncheck.recalibrate(missing, CALIBRATION / "digits_train.npz")


def test_a_file_output_is_checked_as_the_command_checks_it(tmp_path: Path) -> None:
    """One check of the output for the command and the API: before the model is loaded."""
    cases = [
        (tmp_path / "o.h5", r"MODEL is a \.keras file and OUT keeps its format, so name it"),
        (tmp_path, "is a directory: give the file to write"),
        (STALE, r"refusing to overwrite .* pass in_place=True"),
    ]
    for output, message in cases:
        with pytest.raises(UsageError, match=message):
            bncheck.recalibrate(STALE, (X, Y), output=output)
    assert list(tmp_path.iterdir()) == []
