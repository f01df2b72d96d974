"""Recalibration is verified, never blind: on 10-class digit models trained right and wrong, it
writes exactly the repairs that held-out data confirms, measured here with Keras itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
MODELS = FIXTURES / "calibration"
TRAIN = MODELS / "digits_train.npz"
TEST = MODELS / "digits_test.npz"


def held_out_accuracy(path: Path) -> float:
    """Keras's own inference-mode accuracy on the held-out digits."""
    model = keras.models.load_model(path, compile=False)
    with np.load(TEST) as test:
        x, y = test["x"], test["y"]
    predictions = np.concatenate([np.asarray(model(x[i : i + 64])) for i in range(0, len(x), 64)])
    return float(np.mean(predictions.argmax(axis=1) == y))


def recalibrate(
    run_cli: Run, model: str, out: Path, *args: object, data: Path = TRAIN
) -> CliResult:
    return run_cli("recalibrate", MODELS / f"{model}.keras", "--data", data, "-o", out, *args)


def test_stale_statistics_are_repaired_and_the_repair_is_verified(
    run_cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "fixed.keras"
    result = recalibrate(run_cli, "stale_cnn", out, "--validate", TEST)
    assert result.code == 0, result.err + result.out
    before, after = held_out_accuracy(MODELS / "stale_cnn.keras"), held_out_accuracy(out)
    assert after >= before + 0.3
    # What it printed is what Keras measures.
    assert (
        f"verified on {TEST} (held-out data, 397 samples): accuracy {before:.1%} with the stored "
        f"statistics, {after:.1%} with the new ones ("
    ) in result.out
    assert "95% interval" in result.out
    assert f"wrote {out}" in result.out
    assert result.out.rstrip().splitlines()[-1].startswith("OK: 0 errors, 0 warnings")
    # The written model is judged on the held-out data, which its statistics were not made from.
    assert f"probe: real data ({TEST}, labelled)" in result.out


def test_calibration_data_unlike_the_real_data_shows_in_the_written_models_report(
    run_cli: Run, tmp_path: Path
) -> None:
    """Statistics estimated from scaled inputs fit those inputs: judged on held-out data, the
    written model's report says what they cost, where judged on the calibration data it was OK."""
    scaled = tmp_path / "scaled.npz"
    with np.load(TRAIN) as train:
        np.savez(scaled, x=train["x"] * 3, y=train["y"])
    out = tmp_path / "o.keras"
    result = recalibrate(run_cli, "healthy_cnn", out, "--validate", TEST, "--force", data=scaled)
    assert out.exists()
    assert "error    BN015 recalibration-effect" in result.out
    assert result.code == 1


def test_a_network_that_learned_without_batch_statistics_is_not_recalibrated(
    run_cli: Run, tmp_path: Path
) -> None:
    """Seed 004 on a small network: it works in inference mode, and new statistics break it."""
    out = tmp_path / "fixed.keras"
    result = recalibrate(run_cli, "no_training_flag_small", out, "--validate", TEST)
    assert result.code == 1
    assert not out.exists()
    assert "nothing recalibrated: all 3 BatchNorm layers keep their statistics" in result.out
    kept = "kept (never updated): its statistics never moved while its scale and offset trained"
    assert kept in result.out

    forced_layers = recalibrate(
        run_cli, "no_training_flag_small", out, "--validate", TEST, "--include-untouched"
    )
    assert forced_layers.code == 1
    assert not out.exists()
    before = held_out_accuracy(MODELS / "no_training_flag_small.keras")
    [refusal] = [line for line in forced_layers.out.splitlines() if line.startswith("not written")]
    assert f"accuracy on {TEST} (held-out data, 397 samples) would fall from {before:.1%}" in (
        refusal
    )
    assert "pass --force" in refusal

    # The refusal was right: written anyway, the model is worse on held-out data.
    written = recalibrate(
        run_cli,
        "no_training_flag_small",
        out,
        "--validate",
        TEST,
        "--include-untouched",
        "--force",
    )
    assert f"wrote {out} although accuracy" in written.out
    assert held_out_accuracy(out) <= before - 0.1


def test_a_frozen_base_under_a_trained_head_keeps_its_statistics(
    run_cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "fixed.keras"
    result = recalibrate(run_cli, "frozen_base", out, "--validate", TEST)
    assert result.code == 1 and not out.exists()
    assert "kept (frozen): trainable=False: the layers after it learned with its statistics" in (
        result.out
    )
    included = recalibrate(run_cli, "frozen_base", out, "--validate", TEST, "--include-frozen")
    assert included.code == 1 and not out.exists()
    assert "not written: accuracy on" in included.out and "would fall from" in included.out


def test_momentum_one_explains_the_untouched_statistics_and_is_repaired(
    run_cli: Run, tmp_path: Path
) -> None:
    out = tmp_path / "fixed.keras"
    result = recalibrate(run_cli, "momentum_one", out, "--validate", TEST)
    assert f"wrote {out}" in result.out
    assert held_out_accuracy(out) >= held_out_accuracy(MODELS / "momentum_one.keras") + 0.5
    # The statistics are repaired; momentum 1.0 is still in the configuration, which matters
    # only to further training: the gate on the written model says so as information and passes.
    report = result.out.split(f"wrote {out}")[1]
    assert result.code == 0
    # One line for the three layers, the same finding for each.
    assert re.search(r"info     BN008 momentum-never-updates  3 layers \(", report), report
    assert "still at their initial values" not in report
    assert result.out.count("  recalibrated  ") == 3
    assert [layer.moving_variance.mean() != 1.0 for layer in read_model(str(out)).layers] == [
        True
    ] * 3


def test_without_labels_many_changed_predictions_are_unverified(
    run_cli: Run, tmp_path: Path
) -> None:
    images = tmp_path / "images.npy"
    with np.load(TRAIN) as train:
        np.save(images, train["x"])
    out = tmp_path / "fixed.keras"
    result = run_cli("recalibrate", MODELS / "stale_cnn.keras", "--data", images, "-o", out)
    assert result.code == 1 and not out.exists()
    assert "compared on" in result.out and "without labels: the top-1 class of" in result.out
    assert "unverified (pass --validate HELD_OUT)" in result.out
    # A healthy model changes too few predictions to need labels.
    healthy = run_cli("recalibrate", MODELS / "healthy_cnn.keras", "--data", images, "-o", out)
    assert healthy.code == 0, healthy.out
    assert out.exists()
    # Written, and said to be unverified: few changed predictions are no proof they are right.
    assert f"wrote {out}, unverified: without labels bncheck cannot tell" in healthy.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--validate", "{images}"], "--validate {images} has no labels"),
        (["--validate-labels", "{images}"], "--validate-labels needs --validate"),
    ],
)
def test_validation_needs_labels(
    run_cli: Run, tmp_path: Path, args: list[str], message: str
) -> None:
    images = tmp_path / "images.npy"
    with np.load(TEST) as test:
        np.save(images, test["x"])
    filled = [arg.replace("{images}", str(images)) for arg in args]
    result = recalibrate(run_cli, "stale_cnn", tmp_path / "o.keras", *filled)
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: ")
    assert message.replace("{images}", str(images)) in line


def test_out_keeps_the_format_of_model(run_cli: Run, tmp_path: Path) -> None:
    """A .keras archive written under a .h5 name is a file Keras cannot load."""
    result = recalibrate(run_cli, "stale_cnn", tmp_path / "fixed.h5", "--validate", TEST)
    assert result.code == 2
    assert "MODEL is a .keras file and OUT keeps its format, so name it .keras" in result.err
    directory = recalibrate(run_cli, "stale_cnn", tmp_path, "--validate", TEST)
    assert directory.code == 2 and "is a directory: give the file to write" in directory.err
    assert sorted(tmp_path.iterdir()) == []


def test_one_sample_per_batch_is_refused(run_cli: Run, tmp_path: Path) -> None:
    """One sample has no batch statistics: a Dense layer's variance would be zero."""
    result = recalibrate(run_cli, "healthy_mlp", tmp_path / "o.keras", "--batch-size", "1")
    assert result.code == 2 and "--batch-size" in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_labels_outside_the_classes_are_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad_labels.npz"
    with np.load(TEST) as test:
        np.savez(bad, x=test["x"], y=test["y"] + 100)
    result = recalibrate(run_cli, "stale_cnn", tmp_path / "o.keras", "--validate", bad)
    assert result.code == 2
    assert "labels name classes the model's 10 outputs do not have (e.g. 10" in result.err
    assert "give class numbers 0 to 9" in result.err
    assert not (tmp_path / "o.keras").exists()


def test_labels_as_one_column_verify_like_class_numbers(run_cli: Run, tmp_path: Path) -> None:
    """Labels shaped (N, 1) are class numbers: measured as accuracy, never as the squared
    error of ten class scores against one number, which would let a harmful repair through."""
    column = tmp_path / "column.npz"
    with np.load(TEST) as test:
        np.savez(column, x=test["x"], y=test["y"][:, None])
    result = recalibrate(run_cli, "stale_cnn", tmp_path / "o.keras", "--validate", column)
    assert "verified on" in result.out and "accuracy" in result.out
    assert "mean squared error" not in result.out
    plain = recalibrate(run_cli, "stale_cnn", tmp_path / "p.keras", "--validate", TEST)
    assert _verification(result.out) == _verification(plain.out)


def _verification(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("verified on")).split(": ")[1]


def test_fractional_labels_for_a_classifier_are_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    bad = tmp_path / "half.npz"
    with np.load(TEST) as test:
        np.savez(bad, x=test["x"], y=test["y"] + 0.5)
    result = recalibrate(run_cli, "stale_cnn", tmp_path / "o.keras", "--validate", bad)
    assert result.code == 2
    assert "the labels are not class numbers (e.g. " in result.err
    assert "for the model's 10 class outputs: give whole class numbers" in (result.err)
    assert not (tmp_path / "o.keras").exists()


def test_non_finite_data_is_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    nan = tmp_path / "nan.npz"
    with np.load(TRAIN) as train:
        x = train["x"].copy()
        x[5, 0, 0, 0] = np.nan
        np.savez(nan, x=x, y=train["y"])
    result = run_cli("inspect", MODELS / "healthy_cnn.keras", "--data", nan)
    assert result.code == 2
    assert "holds 1 NaN or infinite values in one batch: clean the data first" in result.err


def test_data_whose_samples_are_all_the_same_is_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    """All-zero inputs have no variance: every layer would look stale against them."""
    zeros = tmp_path / "zeros.npy"
    with np.load(TRAIN) as train:
        np.save(zeros, np.zeros_like(train["x"][:64]))
    result = run_cli("inspect", MODELS / "healthy_cnn.keras", "--data", zeros)
    assert result.code == 2
    assert f"every sample of --data {zeros} is the same" in result.err


def test_a_refusal_says_which_way_the_numbers_move() -> None:
    """A mean squared error that grows is the refusal's case: it rises, it does not fall."""
    from bncheck.probe.results import Metric
    from bncheck.recalibrate.command import _refusal
    from bncheck.recalibrate.results import Verification
    from bncheck.settings import Settings

    def check(metric: Metric) -> Verification:
        return Verification("held.npz", True, 397, metric, None, 0.5)

    worse_error = _refusal(check(Metric("mean squared error", 0.4534, 19.78, None)), Settings())
    assert worse_error == (
        "mean squared error on held.npz (held-out data, 397 samples) would rise from 0.4534 "
        "to 19.78"
    )
    worse_accuracy = _refusal(check(Metric("accuracy", 0.987, 0.695, None)), Settings())
    assert worse_accuracy is not None and "accuracy" in worse_accuracy
    assert "would fall from 98.7% to 69.5%" in worse_accuracy
    assert _refusal(check(Metric("mean squared error", 0.9, 0.83, None)), Settings()) is None
