"""moving_variance is negative in some channel.

A variance cannot be negative. At inference the layer divides by ``sqrt(moving_variance +
epsilon)``: a negative value larger than epsilon gives NaN, a smaller one an enormous gain.

Why it happens: a hand-written BatchNorm whose update subtracts instead of adds, statistics
edited or converted by a buggy script (e.g. a standard deviation stored as log-variance), or a
corrupted file.

How to fix: find the code that wrote the statistics; re-estimate them from data with
``bncheck recalibrate MODEL --data DATA -o FIXED``.

Passing: moving_variance [0.8, 0.03, 2.1].
Failing: moving_variance [0.8, -0.5, 2.1].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN004"
NAME = "negative-variance"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    variance = np.asarray(layer.moving_variance, dtype=np.float64).ravel()
    negative = np.flatnonzero(variance < 0)
    if negative.size == 0:
        return
    yield Problem(
        message=layer.vocabulary.translate(
            f"moving_variance is negative in {negative.size} of {variance.size} channels "
            f"(lowest {variance[negative].min():.4g})"
        ),
        layer=layer.path,
        details={
            "channels": int(negative.size),
            "min": float(variance[negative].min()),
            "first_channels": negative[:10].tolist(),
        },
    )
