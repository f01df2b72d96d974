"""A weights-only file runs in the architecture of ``--architecture``, as a
ModelCheckpoint(save_weights_only=True) file is kept beside the model it was trained in."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.conftest import CliResult

Run = Callable[..., CliResult]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import keras

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x = digits.images[order].astype("float32")[..., None]  # pixels 0 to 16, unscaled
    y = digits.target[order]
    out = tmp_path_factory.mktemp("architecture")
    keras.utils.set_random_seed(0)

    def network(width: int) -> Any:
        return keras.Sequential(
            [
                keras.Input((8, 8, 1)),
                keras.layers.Conv2D(width, 3, padding="same", use_bias=False),
                keras.layers.BatchNormalization(momentum=0.999),
                keras.layers.ReLU(),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )

    model = network(16)
    model.save(out / "architecture.keras")  # before training, as a project keeps it
    model.compile("adam", "sparse_categorical_crossentropy")
    checkpoint = keras.callbacks.ModelCheckpoint(out / "last.weights.h5", save_weights_only=True)
    model.fit(x[:1200], y[:1200], epochs=3, batch_size=32, verbose=0, callbacks=[checkpoint])
    network(8).save(out / "narrower.keras")
    np.savez(out / "heldout.npz", x=x[1200:1776], y=y[1200:1776])
    np.savez(out / "calibration.npz", x=x[:600], y=y[:600])
    predicted = model.predict(x[1200:1776], verbose=0).argmax(1)
    return {
        "dir": out,
        "accuracy": float(np.mean(predicted == y[1200:1776])),
    }


def test_weights_run_in_their_architecture(run_cli: Run, saved: dict[str, Any]) -> None:
    out = saved["dir"]
    result = run_cli(
        "inspect",
        out / "last.weights.h5",
        "--architecture",
        out / "architecture.keras",
        "--data",
        out / "heldout.npz",
        "--format",
        "json",
    )
    model = result.json()["models"][0]
    probe = model["probe"]
    assert probe["skipped"] is None and probe["loader"] == "keras"
    metric = probe["outputs"][0]["metric"]
    assert metric["stored"] == pytest.approx(saved["accuracy"], abs=1e-9)
    # The weights were measured, their statistics re-estimated over the data.
    assert metric["reestimated"] is not None and probe["layers"][0]["population"] is not None
    assert result.code in (0, 1)


def test_without_an_architecture_the_skip_says_what_to_pass(
    run_cli: Run, saved: dict[str, Any]
) -> None:
    out = saved["dir"]
    result = run_cli("inspect", out / "last.weights.h5", "--data", out / "heldout.npz")
    assert "pass --architecture MODEL" in result.out


def test_weights_that_do_not_fit_are_one_line(run_cli: Run, saved: dict[str, Any]) -> None:
    out = saved["dir"]
    result = run_cli(
        "inspect",
        out / "last.weights.h5",
        "--architecture",
        out / "narrower.keras",
        "--data",
        out / "heldout.npz",
        "--format",
        "json",
    )
    error = result.json()["models"][0]["error"]
    assert error.startswith("probe: ") and "do not fit the --architecture model" in error
    assert "\n" not in error and result.code == 3


def test_recalibrate_repairs_the_weights_file(run_cli: Run, saved: dict[str, Any]) -> None:
    import keras

    out = saved["dir"]
    repaired = out / "repaired.weights.h5"
    result = run_cli(
        "recalibrate",
        out / "last.weights.h5",
        "--architecture",
        out / "architecture.keras",
        "--data",
        out / "calibration.npz",
        "--validate",
        out / "heldout.npz",
        "-o",
        repaired,
        "--force",  # written whatever the verdict: the test checks what was written
    )
    assert result.code in (0, 1) and f"wrote {repaired}" in result.out, result.out + result.err
    found = re.search(
        r"accuracy ([0-9.]+)% with the stored statistics, ([0-9.]+)% with the", result.out
    )
    assert found is not None
    model = keras.models.load_model(out / "architecture.keras", compile=False)
    model.load_weights(repaired)
    heldout = np.load(out / "heldout.npz")
    accuracy = float(np.mean(model.predict(heldout["x"], verbose=0).argmax(1) == heldout["y"]))
    assert accuracy == pytest.approx(float(found.group(2)) / 100, abs=0.0006)


def test_recalibrating_weights_needs_their_architecture(
    run_cli: Run, saved: dict[str, Any]
) -> None:
    out = saved["dir"]
    result = run_cli(
        "recalibrate", out / "last.weights.h5", "--data", out / "calibration.npz", "-o",
        out / "never.weights.h5",
    )  # fmt: skip
    assert result.code == 2 and "pass --architecture MODEL" in result.err
