"""The moving statistics never left their initial values, although gamma or beta trained.

moving_mean and moving_variance still equal their initializers (zeros and ones by default) in
every channel, while gamma or beta moved away from theirs. The weights trained; the statistics
never did. What that means for the model depends on how it trained, and only a measurement tells:

- **It learned without batch statistics.** A custom training loop called ``model(x)`` instead of
  ``model(x, training=True)`` (Keras only uses and updates batch statistics in training mode). Every
  BatchNorm layer then acted as a fixed affine map during training, so inference mode is exactly
  what the network learned. A shallow network often works (a 3-BN CNN on 10-class digits: 93.2%
  held-out accuracy in inference mode); re-estimating its statistics breaks it (59.2%), because
  its weights never saw normalised activations. A deep one usually collapses: every input gets
  the same output (BN013), and it is broken whatever its statistics.
- **It learned with batch statistics whose averages were never kept.** TF1 code ran
  ``optimizer.minimize`` without the ``UPDATE_OPS`` dependency, or the statistics were dropped
  when saving and re-initialised. The network needs normalised activations, and re-estimating the
  statistics from data repairs it.

In PyTorch files, ``num_batches_tracked`` is the strongest evidence: 0 means the layer never ran
in training mode (trained in ``eval()`` mode, or with frozen BatchNorm), and the finding says so.
Above 0, the layer normalised that many training batches with their own statistics and kept
none of them (``momentum=0``): the network learned with batch statistics, re-estimating them
repairs it, and ``bncheck recalibrate`` re-estimates such a layer by default.
A layer without the counter is reported as information only: FrozenBatchNorm layers (detectron2,
timm) have none, and backbones converted to them keep mean 0 and variance 1 on purpose, with the
statistics folded into weight and bias. A counter of 0 with moved statistics is not reported:
PyTorch sets it to 0 when it loads a checkpoint written before version 0.4.1.

How to fix: measure before repairing. ``bncheck inspect MODEL --data DATA`` with labels (an
``.npz`` holding ``x`` and ``y``, or ``--labels``) reports the metric with the stored statistics,
with re-estimated ones and in training mode (BN015). If the network learned without batch
statistics, do not recalibrate: keep the model if its inference-mode metric is good, otherwise
retrain with ``training=True`` (``model.fit`` does this for you). If re-estimated statistics do
better, ``bncheck recalibrate MODEL --data DATA --include-untouched --validate HELD_OUT -o FIXED``
writes them, verified on held-out data. When momentum is 1.0 the statistics could not move at
all: BN008 reports that instead.

Options:
  tolerance: largest absolute difference still counted as "equal to the initial value".

Passing: moving_mean [0.12, -0.4, ...], moving_variance [0.8, 2.3, ...] after ``model.fit``.
Failing: moving_mean all 0, moving_variance all 1, gamma [0.97, 1.05, ...] after a
``tf.function`` loop that called ``model(x)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck import verdict
from bncheck.findings import Escalation, Problem, Severity
from bncheck.model import INFERRED_BY_NAMES, BNLayer
from bncheck.rules._arrays import untouched_while_trained

ID = "BN001"
NAME = "untouched-moving-stats"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"tolerance": 1e-6}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    if verdict.layer_momentum_holds_statistics(layer):
        return  # BN008: a momentum that cannot move them explains the initial values
    trained = untouched_while_trained(layer, options["tolerance"])
    if not trained:
        return
    frozen_look_alike = layer.framework == "pytorch" and layer.num_batches_tracked is None
    yield Problem(
        message=layer.vocabulary.translate(
            f"moving_mean and moving_variance are still at their initial values "
            f"({layer.initial.moving_mean:g} and {layer.initial.moving_variance:g}) in all "
            f"{layer.channels} channels, but {' and '.join(trained)} trained: the statistics "
            f"were never updated{_cause(layer)}"
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


#: What to do when the cause does not say whether the network learned with batch statistics.
MEASURE_FIRST = (
    "; measure with labelled --data before recalibrating, which can make such a model worse"
)


def _cause(layer: BNLayer) -> str:
    """Why the statistics did not move, and what to do."""
    return _why(layer) + ("" if verdict.ran_with_batch_statistics(layer) else MEASURE_FIRST)


def _why(layer: BNLayer) -> str:
    if layer.framework != "pytorch":
        if layer.class_name == INFERRED_BY_NAMES:
            # Found by variable names (TF1 code): UPDATE_OPS is the usual way to lose updates.
            return (
                " (a train_op without a dependency on tf.GraphKeys.UPDATE_OPS, a loop calling "
                "model(x) without training=True, or statistics lost in saving?)"
            )
        if layer.momentum is None:
            # No configuration records it (a BatchNorm a custom layer creates): 1.0 is a cause.
            return (
                " (a loop calling model(x) without training=True, statistics lost in saving, or "
                "momentum 1.0? A custom layer's configuration keeps the momentum in no form "
                "bncheck can read; --data with --custom-objects takes it from the loaded model)"
            )
        return " (a loop calling model(x) without training=True, or statistics lost in saving?)"
    if layer.num_batches_tracked is None:
        return (
            ", unless this is a FrozenBatchNorm layer (it has no num_batches_tracked) of a "
            "converted backbone, which folds its statistics into weight and bias on purpose"
        )
    if layer.num_batches_tracked == 0:
        return "; num_batches_tracked is 0: the layer never ran in training mode"
    return (
        f"; num_batches_tracked is {layer.num_batches_tracked}: the layer ran in training mode, "
        "normalising with batch statistics, and momentum must have been 0, so their averages "
        "never moved. The network learned with batch statistics: re-estimating them from data "
        "repairs it (bncheck recalibrate, verified on --validate data)"
    )
