"""The output figures a compiled pass records per BatchNorm call."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from bncheck.probe.runtimes.passes import _figures


def figures(outputs: np.ndarray, expected: np.ndarray | None, compare: bool) -> np.ndarray:
    flag = tf.Variable(compare)
    reference = None if expected is None else (lambda: tf.constant(expected))

    @tf.function(autograph=False)
    def run(values: object) -> object:
        return _figures(values, reference, flag)[0]

    return np.asarray(run(tf.constant(outputs)))


def test_finite_outputs() -> None:
    values = np.array([[1.0, -1.0], [3.0, 1.0]], np.float32)
    rms, deviation, nonfinite, error = figures(values, values + 1, compare=True)
    assert rms == pytest.approx(np.sqrt(np.mean(values**2)))
    assert deviation == pytest.approx(np.mean(np.std(values, axis=0)))
    assert nonfinite == 0
    assert error == pytest.approx(np.linalg.norm(np.ones(4)) / np.linalg.norm(values))


def test_non_finite_values_are_counted_and_left_out() -> None:
    values = np.array([[1.0, np.nan], [3.0, np.inf]], np.float32)
    rms, deviation, nonfinite, _ = figures(values, None, compare=False)
    clean = np.array([[1.0, 0.0], [3.0, 0.0]])
    assert nonfinite == 2
    assert rms == pytest.approx(np.sqrt(np.mean(clean**2)))
    assert deviation == pytest.approx(np.mean(np.std(clean, axis=0)))


def test_the_comparison_runs_only_when_asked() -> None:
    values = np.ones((2, 2), np.float32)
    assert figures(values, values * 2, compare=False)[3] == -1.0
    assert figures(values, values * 2, compare=True)[3] == pytest.approx(1.0)


def test_a_model_drawing_random_numbers_at_inference_is_told_apart() -> None:
    """BN016 runs half a batch alone; a model that draws random numbers at inference (an export
    that left its augmentation on) differs from itself too, and the probe says so."""
    from bncheck.probe.data.specs import Batch
    from bncheck.probe.measure import OutputSums, _half_alone

    batch = Batch([np.arange(64, dtype=np.float32).reshape(32, 2)])
    rng = np.random.default_rng(0)

    def steady(inputs: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        return [("y", inputs[0] * 2.0)]

    def noisy(inputs: list[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        return [("y", inputs[0] * 2.0 + rng.normal(size=inputs[0].shape))]

    outputs = {"y": OutputSums()}
    assert _half_alone(batch, steady(batch.inputs), steady, outputs) == []
    assert outputs["y"].half_dependence == 0.0
    [note] = _half_alone(batch, noisy(batch.inputs), noisy, outputs)
    assert "draws random numbers at inference" in note
