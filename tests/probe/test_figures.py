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
