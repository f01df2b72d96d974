"""The model's metric on the labelled data, with its stored statistics, misses the bound set.

A pre-deployment gate: ``bncheck inspect MODEL --data HELD_OUT --fail-under accuracy=0.9`` fails
(exit 1) when the accuracy the deployed model gives (inference mode, the statistics stored in the
file) is below 90% on the labelled data; ``--fail-under mse=0.5`` when its mean squared error is
above 0.5. The metric is the probe's (BN015's): accuracy for classifiers, the mean squared error
otherwise. A bound that cannot be measured is a mistake in the command, not a failing model:
``--fail-under`` without ``--data``, with ``--probe`` alone (synthetic data) or with data that
has no labels is a usage error (one line, exit 2), like any other. A bound set in a
configuration file instead is judged when labelled data comes; with unlabelled data, or for a
model whose metric is the other one, it fails the gate (exit 1): nothing was measured to pass
it with.

The bound is judged on the value measured on the data given (the point estimate, as the report
prints it), not on an end of its 95% interval: a gate promises that the model as deployed scored
this on the held-out set, the figure a release note quotes, and judging by the interval would
let a model pass or fail by the size of the set rather than by its score. Hold the model to a
margin (``accuracy=0.92`` for a 90% promise), or give more data, where the difference matters.

The bounds are this rule's options, so a configuration file can set them as well
(``[tool.bncheck.rules.BN023] min_accuracy = 0.9``); the defaults (0 and infinity) never fail.

Why it happens: the model, its statistics (see BN014, BN015) or the data is not what it should
be.

How to fix: read the other findings; ``bncheck recalibrate`` repairs stale statistics.

Options:
  min_accuracy: an accuracy below this fails (``--fail-under accuracy=VALUE``).
  max_mean_squared_error: a mean squared error above this fails (``--fail-under mse=VALUE``).

Passing: accuracy 98.4% with the stored statistics and ``--fail-under accuracy=0.9``.
Failing: accuracy 9.8% with the stored statistics (a CNN fit for one epoch whose averages had
not caught up) and ``--fail-under accuracy=0.9``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck.findings import Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import ProbeResult

ID = "BN023"
NAME = "metric-below-bound"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {"min_accuracy": 0.0, "max_mean_squared_error": math.inf}

#: Each metric's option and whether the bound is a lower one.
_BOUNDS = {
    "accuracy": ("min_accuracy", True),
    "mean squared error": ("max_mean_squared_error", False),
}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    wanted = {
        name: options[option]
        for name, (option, lower) in _BOUNDS.items()
        if (options[option] > 0.0 if lower else math.isfinite(options[option]))
    }
    if not wanted or not result.ran:
        return
    metric = next((output.metric for output in result.outputs if output.metric), None)
    bounds = " and ".join(f"{name} {_bound(name, value)}" for name, value in wanted.items())
    if metric is None:
        yield Problem(
            message=f"no metric was measured to check {bounds} against: give labelled --data",
            details={"bounds": wanted},
        )
        return
    if metric.name not in wanted:
        yield Problem(
            message=(
                f"the model's metric on this data is {metric.name} "
                f"({metric.format(metric.stored)}), not what the bound names ({bounds})"
            ),
            details={"bounds": wanted, "metric": metric.name, "stored": metric.stored},
        )
        return
    bound = wanted[metric.name]
    lower = _BOUNDS[metric.name][1]
    if (metric.stored >= bound) if lower else (metric.stored <= bound):
        return
    samples = result.data.samples if result.data else None
    yield Problem(
        message=(
            f"{metric.name} {metric.format(metric.stored)} with the stored statistics on "
            f"{samples} labelled samples misses the bound: {metric.name} "
            f"{_bound(metric.name, bound)}"
        ),
        details={"metric": metric.name, "stored": metric.stored, "bound": bound},
    )


def _bound(name: str, value: float) -> str:
    return f">= {value:.1%}" if _BOUNDS[name][1] else f"<= {value:.4g}"
