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

In PyTorch files, ``num_batches_tracked`` is the strongest evidence: 0 means the layer never ran
in training mode (trained in ``eval()`` mode, or with frozen BatchNorm), and the finding says so.
A layer without the counter is reported as information only: FrozenBatchNorm layers (detectron2,
timm) have none, and backbones converted to them keep mean 0 and variance 1 on purpose, with the
statistics folded into weight and bias. A counter of 0 with moved statistics is not reported:
PyTorch sets it to 0 when it loads a checkpoint written before version 0.4.1.

Passing: moving_mean [0.12, -0.4, ...], moving_variance [0.8, 2.3, ...] after ``model.fit``.
Failing: moving_mean all 0, moving_variance all 1, gamma [0.97, 1.05, ...] after a
``tf.function`` loop that called ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Escalation, Problem, Severity
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
    frozen_look_alike = layer.framework == "pytorch" and layer.num_batches_tracked is None
    yield Problem(
        message=(
            f"moving_mean and moving_variance are still at their initial values "
            f"({layer.initial.moving_mean:g} and {layer.initial.moving_variance:g}) in all "
            f"{layer.channels} channels, but {' and '.join(trained)} trained: the statistics "
            f"were never updated{_pytorch_evidence(layer)}"
        ),
        layer=layer.path,
        details={
            "channels": layer.channels,
            "trained": trained,
            "initial_values_assumed": layer.initial.assumed,
            "num_batches_tracked": layer.num_batches_tracked,
        },
        escalation=Escalation.MITIGATED if frozen_look_alike else None,
    )


def _pytorch_evidence(layer: BNLayer) -> str:
    if layer.framework != "pytorch":
        return ""
    if layer.num_batches_tracked is None:
        return (
            ", unless this is a FrozenBatchNorm layer (it has no num_batches_tracked) of a "
            "converted backbone, which folds its statistics into weight and bias on purpose"
        )
    if layer.num_batches_tracked == 0:
        return "; num_batches_tracked is 0: the layer never ran in training mode"
    return f"; num_batches_tracked is {layer.num_batches_tracked}, so momentum must have been 0"
