"""Array predicates shared by the static rules."""

from __future__ import annotations

import numpy as np

from bncheck.model import ArraySummary, BNLayer


def at_initial(layer: BNLayer, array_name: str, tolerance: float) -> bool | None:
    """Whether every value of the array still equals its configured initial constant.

    ``None`` when the layer has no such array or its initializer is not a constant.
    """
    array = layer.array(array_name)
    initial = layer.initial.of(array_name)
    if array is None or initial is None:
        return None
    # Compare with the constant as the array's own precision stores it (0.1 is inexact in float32).
    reference = float(np.asarray(initial, dtype=np.asarray(array).dtype))
    # Every value is within ``tolerance`` of it when the smallest and the largest are: the
    # layer's summary, computed once, holds them (a NaN or an infinity never is within).
    summary = layer.summaries[array_name] or ArraySummary.of(array)
    if summary.nonfinite:
        return False
    if summary.min is None or summary.max is None:
        return True  # no values at all
    return max(abs(summary.min - reference), abs(summary.max - reference)) <= tolerance


def untouched_while_trained(layer: BNLayer, tolerance: float = 1e-6) -> list[str]:
    """The affine arrays (``gamma``, ``beta``) that moved away from their initial values while
    both moving statistics still equal theirs; empty when the statistics moved, or nothing did.
    """
    if not (
        at_initial(layer, "moving_mean", tolerance)
        and at_initial(layer, "moving_variance", tolerance)
    ):
        return []
    return [name for name in ("gamma", "beta") if at_initial(layer, name, tolerance) is False]


def describe_values(array: np.ndarray) -> str:
    values = np.asarray(array, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return "no finite values"
    return f"mean {finite.mean():.4g}, range [{finite.min():.4g}, {finite.max():.4g}]"
