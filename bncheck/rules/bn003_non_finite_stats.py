"""A BatchNorm array holds NaN or infinite values.

One NaN in moving_mean or moving_variance turns that channel's output into NaN for every input,
and the NaN spreads through every later layer. A NaN in gamma or beta does the same.

Why it happens: training diverged (too high a learning rate, a log of zero, mixed precision
overflow) and the statistics absorbed the NaN; or a file was corrupted.

How to fix: restore an earlier checkpoint taken before the divergence; if only the moving
statistics are affected, re-estimate them: ``bncheck recalibrate MODEL --data DATA -o FIXED``.

Passing: all values finite.
Failing: moving_variance [0.9, nan, 1.2, ...].
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN003"
NAME = "non-finite-stats"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    if not any(summary.nonfinite for summary in layer.summaries.values() if summary is not None):
        return
    counts = {}
    for name, array in layer.arrays().items():
        values = np.asarray(array, dtype=np.float64)
        nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
        if nan or inf:
            counts[name] = {"nan": nan, "inf": inf, "channels": int(values.size)}
    if not counts:
        return
    described = "; ".join(
        f"{name} has {c['nan']} NaN and {c['inf']} infinite of {c['channels']} values"
        for name, c in counts.items()
    )
    message = layer.vocabulary.translate(described)
    yield Problem(message=message, layer=layer.path, details={"arrays": counts})
