"""The moving statistics never left their initial values, although the layer's weights trained.

moving_mean and moving_variance still equal their initializers (zeros and ones by default) in
every channel, while gamma or beta moved away from theirs. The weights trained; the statistics
never did. At inference the layer normalises with mean 0 and variance 1, which describe no real
activations, so predictions are wrong and often identical for every input.

Why it happens: a custom training loop called ``model(x)`` instead of ``model(x, training=True)``
(Keras only updates the statistics in training mode); TF1 code ran ``optimizer.minimize`` without
the ``UPDATE_OPS`` dependency; or the statistics were dropped when saving and re-initialised.

How to fix: train with ``training=True`` (``model.fit`` does this for you), or re-estimate the
statistics from data without retraining: ``bncheck recalibrate MODEL --data DATA -o FIXED``.

Options:
  tolerance: largest absolute difference still counted as "equal to the initial value".

Passing: moving_mean [0.12, -0.4, ...], moving_variance [0.8, 2.3, ...] after ``model.fit``.
Failing: moving_mean all 0, moving_variance all 1, gamma [0.97, 1.05, ...] after a
``tf.function`` loop that called ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer
from bncheck.rules._arrays import at_initial

ID = "BN001"
NAME = "untouched-moving-stats"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"tolerance": 1e-6}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    tolerance = options["tolerance"]
    if not (
        at_initial(layer, "moving_mean", tolerance)
        and at_initial(layer, "moving_variance", tolerance)
    ):
        return
    trained = [name for name in ("gamma", "beta") if at_initial(layer, name, tolerance) is False]
    if not trained:
        return
    yield Problem(
        message=(
            f"moving_mean and moving_variance are still at their initial values "
            f"({layer.initial.moving_mean:g} and {layer.initial.moving_variance:g}) in all "
            f"{layer.channels} channels, but {' and '.join(trained)} trained: the statistics "
            "were never updated"
        ),
        layer=layer.path,
        details={
            "channels": layer.channels,
            "trained": trained,
            "initial_values_assumed": layer.initial.assumed,
        },
    )
