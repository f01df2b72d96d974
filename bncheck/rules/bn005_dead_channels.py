"""Channels whose moving_variance is (nearly) zero: their input never varied during training.

The channel's input was constant, typically a ReLU unit that never activates (a "dead" unit),
so the layer outputs a constant (beta) for it. Real trained networks have many such channels;
this is information about capacity, not an error, unless the fraction is large.

How to fix: nothing to fix for a few channels. A large fraction in one layer can point to a
too-high learning rate or a bad initialisation upstream; pruning the dead channels makes the
model smaller at no cost.

Options:
  max_variance: a channel whose moving_variance is below this (and not negative) is dead.

Passing: moving_variance [0.3, 1.2, 0.05].
Failing: moving_variance [0.3, 0.0, 0.0, 1.2] -> 2 of 4 channels dead (reported as info).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN005"
NAME = "dead-channels"
DEFAULT_SEVERITY = Severity.INFO
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"max_variance": 1e-12}


def dead_channels(layer: BNLayer, max_variance: float) -> np.ndarray:
    """Indices of the channels whose moving_variance is below ``max_variance`` and not
    negative."""
    variance = np.asarray(layer.moving_variance, dtype=np.float64).ravel()
    return np.flatnonzero((variance >= 0) & (variance < max_variance))


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    variance = np.asarray(layer.moving_variance, dtype=np.float64).ravel()
    dead = dead_channels(layer, options["max_variance"])
    if dead.size == 0:
        return
    fraction = dead.size / variance.size
    yield Problem(
        message=layer.vocabulary.translate(
            f"{dead.size} of {variance.size} channels ({fraction:.0%}) have moving_variance below "
            f"{options['max_variance']:g}: their input never varied"
        ),
        layer=layer.path,
        details={
            "channels": int(dead.size),
            "fraction": round(fraction, 6),
            "first_channels": dead[:10].tolist(),
        },
    )
