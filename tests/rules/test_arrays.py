"""``at_initial`` decides from the layer's summary what comparing every value would."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.model import InitialValues
from bncheck.rules._arrays import at_initial
from tests.rules.conftest import layer


def every_value_within(values: np.ndarray, initial: float, tolerance: float) -> bool:
    """The definition: each value, in float64, within ``tolerance`` of the constant as the
    array's precision stores it."""
    reference = float(np.asarray(initial, dtype=values.dtype))
    return bool(np.all(np.abs(values.astype(np.float64) - reference) <= tolerance))


def cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    found: list[np.ndarray] = []
    for dtype in ("float32", "float16", "float64"):
        for initial in (0.0, 1.0):
            exact = np.asarray(initial, dtype=dtype)
            for spread in (0.0, 1e-7, 1e-6, 5e-7, 1e-3):
                found.append((exact + rng.uniform(-spread, spread, 64)).astype(dtype))
            edge = np.full(8, exact, dtype=np.float64)
            edge[3] += 1e-6  # exactly at the tolerance, in float64
            found.append(edge.astype(dtype))
            for bad in (np.nan, np.inf, -np.inf):
                with_bad = np.full(16, exact, dtype=dtype)
                with_bad[5] = bad
                found.append(with_bad)
            found.append(np.full(4, np.nan, dtype=dtype))
            found.append(np.zeros(0, dtype=dtype))
    return found


@pytest.mark.parametrize("tolerance", [0.0, 1e-6, 1e-3])
@pytest.mark.parametrize("initial", [0.0, 1.0, 0.1])
def test_at_initial_agrees_with_comparing_every_value(initial: float, tolerance: float) -> None:
    checked = 0
    for values in cases():
        subject = layer(moving_mean=values, initial=InitialValues(moving_mean=initial))
        expected = every_value_within(values, initial, tolerance)
        assert at_initial(subject, "moving_mean", tolerance) is expected, (values, initial)
        checked += expected
    assert checked, "no case at its initial value: the comparison was never true"


def test_a_layers_summaries_are_each_arrays_own() -> None:
    """Summarised together or one by one, every figure is the same to the last bit."""
    from bncheck.model import ArraySummary

    rng = np.random.default_rng(1)
    compared = 0
    for channels in (1, 7, 64, 129, 513, 2048):
        for dtype in ("float16", "float32", "float64"):
            arrays = {
                name: (rng.normal(size=channels) * rng.uniform(0.1, 100)).astype(dtype)
                for name in ("gamma", "beta", "moving_mean", "moving_variance")
            }
            broken = dict(arrays, moving_variance=arrays["moving_variance"].copy())
            broken["moving_variance"][0] = np.nan
            for fields in (arrays, broken, dict(arrays, gamma=None, beta=None)):
                subject = layer(**fields)
                for name, summary in subject.summaries.items():
                    value = fields[name]
                    assert summary == (None if value is None else ArraySummary.of(value))
                    compared += value is not None
    assert compared == 6 * 3 * 10
