"""The one place that decides what a layer's statistics mean, from everything known about them.

Static evidence raises a suspicion: statistics still at their initial values while gamma or beta
trained (BN001), a layer whose every array is at its initial value (BN002). Measurement settles
it. The rules, the probe's results, recalibrate, the guard and the plot all ask this module, so
that one model gets one story:

- which layers learned without batch statistics (their statistics never moved although the
  momentum let them: the network trained with them as a fixed map, and training mode is not the
  reference there);
- whose staleness the probe judges (BN014), and whose it leaves to the static finding;
- what a measured change of the metric advises, with its uncertainty: recalibrate, do not, or
  nothing yet (the interval includes no change: more data is needed);
- how measurement refines the static findings of a probed model (``settle``): labelled data that
  shows the network works with its stored statistics turns BN001 or BN002 into information, and
  the staleness of such a layer is part of its one finding, not a second one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from bncheck.findings import Escalation, Finding
from bncheck.rules._arrays import at_initial

if TYPE_CHECKING:
    from bncheck.model import BNLayer
    from bncheck.probe.results import LayerMeasurement, Metric, ProbeResult, Staleness
    from bncheck.settings import Settings

#: Static rules whose suspicion (statistics at their initial values) measurement settles.
SUSPICION_RULES = ("BN001", "BN002")
#: The rule that measures staleness, and the one that measures what re-estimating would do.
STALENESS_RULE = "BN014"
EFFECT_RULE = "BN015"


def momentum_holds_statistics(momentum: float | None) -> bool:
    """A momentum (Keras's convention) of 1.0 or more keeps the statistics where they are,
    whatever the mode: they cannot have moved."""
    return momentum is not None and momentum >= 1.0


def layer_momentum_holds_statistics(layer: BNLayer) -> bool:
    """Whether the momentum the file records kept the layer's statistics where they are. Not
    for an ONNX graph's momentum of exactly 1.0: an inference graph records nothing about how
    training ran, and PyTorch's exporter writes ``1 - momentum``, so 1.0 for ``momentum=None``,
    the cumulative average, under which the statistics do move."""
    if layer.framework == "onnx" and layer.momentum == 1.0:
        return False
    return momentum_holds_statistics(layer.keras_momentum)


def statistics_never_moved(layer: BNLayer, tolerance: float = 1e-6) -> list[str]:
    """What shows a layer trained while its statistics stayed at their initial values: the
    affine arrays that moved (``gamma``, ``beta``), or ``["no affine arrays"]`` for a layer that
    has neither (``center=False, scale=False``), whose statistics are all there is. Empty when
    the statistics moved or nothing shows training."""
    if not (
        at_initial(layer, "moving_mean", tolerance)
        and at_initial(layer, "moving_variance", tolerance)
    ):
        return []
    affine = [name for name in ("gamma", "beta") if layer.array(name) is not None]
    if not affine:
        return ["no affine arrays"]
    return [name for name in affine if at_initial(layer, name, tolerance) is False]


def learned_without_batch_statistics(layer: BNLayer, tolerance: float = 1e-6) -> bool:
    """The static verdict: statistics at their initial values although the momentum would have
    moved them, in a layer that trained (or has nothing else to train). The network then learned
    with those statistics; re-estimating them can break it, so only measurement may say to. Not
    a PyTorch layer that counted training batches: it normalised them with their statistics, so
    the network learned with batch statistics, whose averages a momentum of 0 never kept."""
    if layer_momentum_holds_statistics(layer) or ran_with_batch_statistics(layer):
        return False
    return bool(statistics_never_moved(layer, tolerance))


def ran_with_batch_statistics(layer: BNLayer) -> bool:
    """Whether the file shows the layer normalised training batches with their own statistics:
    PyTorch's ``num_batches_tracked`` counts them."""
    return layer.framework == "pytorch" and bool(layer.num_batches_tracked)


def measured_learned_without_batch_statistics(layer: LayerMeasurement) -> bool:
    """The same verdict for a probed layer: the static description's, with the loaded model's
    momentum."""
    return layer.untouched and not momentum_holds_statistics(layer.momentum)


def judged_staleness(layer: LayerMeasurement) -> Staleness | None:
    """How stale a probed layer's statistics are, where staleness is the question: ``None`` for
    statistics that never moved (their static finding and the measured effect say what they
    mean: the network may have learned with them) and where nothing was measured."""
    if layer.untouched:
        return None
    return layer.staleness()


class Advice(enum.Enum):
    """What a measured change of the metric says about re-estimating the statistics: BN015's
    advice and, the same decision, whether ``bncheck recalibrate`` (and
    ``bncheck.torch.recalibrate``) writes them."""

    RECALIBRATE = "recalibrate"
    """Re-estimated statistics do better, beyond the noise: advised, and written."""
    KEEP = "do not recalibrate"
    """Re-estimated statistics do worse, beyond the noise: not written."""
    INCONCLUSIVE = "inconclusive"
    """The change's interval includes no change: the data cannot tell; not written."""
    NO_CHANGE = "no change"
    """A change below ``min_metric_change`` that the data cannot tell from none: nothing to
    report, and nothing to write."""


def relative_gain(metric: Metric) -> float:
    """The gain of re-estimated statistics: accuracy points, or the mean squared error's fall
    relative to its stored value."""
    gain = metric.gain()
    assert gain is not None  # only for a metric measured with re-estimated statistics
    return gain if metric.higher_is_better else gain / max(metric.stored, 1e-12)


def metric_advice(metric: Metric, options: Mapping[str, float]) -> Advice:
    """The one rule for a labelled measurement (``options`` are BN015's): a change whose 95%
    interval excludes no change advises (and writes) re-estimated statistics that do better, and
    keeps those that do worse, whatever its size; any other change is inconclusive, or nothing
    where it is below ``min_metric_change``. A metric built without an interval (its spread
    unknown) is taken at its value, ``min_metric_change`` standing in for the noise."""
    relative = relative_gain(metric)
    small = abs(relative) < options["min_metric_change"]
    shown = not small if metric.change is None else metric.change.excludes_zero
    if not shown:
        return Advice.NO_CHANGE if small else Advice.INCONCLUSIVE
    return Advice.RECALIBRATE if relative > 0 else Advice.KEEP


def inconclusive_on(metric: Metric) -> str:
    """``inconclusive on N samples: give more data``; where not one sample's result changed,
    more data would not help and the text says so."""
    change = metric.change
    if change is not None and change.low == 0.0 == change.high:
        return f"not one of the {change.samples} samples changes: nothing to gain"
    samples = change.samples if change is not None else 0
    return f"inconclusive on {samples} samples: give more data"


def inconclusive(metric: Metric) -> str:
    """The change with its interval, then ``inconclusive on N samples: give more data``."""
    return f"{metric.describe_change()}: {inconclusive_on(metric)}"


def measured_metric(probe: ProbeResult) -> Metric | None:
    """The labelled metric with stored and re-estimated statistics, where the probe has one."""
    for output in probe.outputs:
        if output.metric is not None and output.metric.reestimated is not None:
            return output.metric
    return None


def settle(findings: Sequence[Finding], probe: ProbeResult, settings: Settings) -> list[Finding]:
    """Refine the static suspicion of a probed model's layers by what the probe measured: one
    finding per layer, with one severity and one piece of advice.

    A layer with a BN001 or BN002 finding keeps that one finding: a BN014 finding on it becomes
    part of it (the highest severity of the two), and labelled data decides the rest. Where
    re-estimating would measurably lower the metric, the network works with those statistics:
    the finding becomes information that says to keep them. Where it would measurably raise it,
    the finding says to recalibrate them; where the data cannot tell, it says so."""
    if not probe.ran:
        return list(findings)
    metric = measured_metric(probe)
    advice = (
        metric_advice(metric, settings.rules[EFFECT_RULE].options)
        if metric is not None and settings.enabled(EFFECT_RULE)
        else None
    )
    suspected = {f.layer for f in findings if f.rule in SUSPICION_RULES and f.layer is not None}
    stale = {f.layer: f for f in findings if f.rule == STALENESS_RULE and f.layer in suspected}
    settled = []
    for finding in findings:
        if finding.rule == STALENESS_RULE and finding.layer in suspected:
            continue  # part of the layer's static finding
        if finding.rule in SUSPICION_RULES and finding.layer is not None:
            finding = _refined(finding, stale.get(finding.layer), metric, advice, settings)
        elif finding.rule == STALENESS_RULE and metric is not None and advice is not None:
            finding = _measured_staleness(finding, metric, advice, settings)
        settled.append(finding)
    return settled


def _measured_staleness(
    finding: Finding, metric: Metric, advice: Advice, settings: Settings
) -> Finding:
    """A stale layer's finding as labelled data settles it: the statistics differ from the
    data's, and the network works with them (re-estimating would measurably cost), or does as
    well with them (the interval bounds any effect within BN015's ``max_metric_gain``). Either
    way the finding is information and advises nothing BN015 does not."""
    if advice is Advice.KEEP:
        message = _keep(metric)
    elif advice in (Advice.NO_CHANGE, Advice.INCONCLUSIVE) and _bounded(
        metric, settings.rules[EFFECT_RULE].options["max_metric_gain"]
    ):
        assert metric.change is not None
        message = (
            f"; measured on {metric.change.samples} labelled samples, re-estimating them would "
            f"change {metric.name} by no more than the interval ({metric.describe_change()}): "
            f"the network does as well with these statistics ({EFFECT_RULE})"
        )
    else:
        return finding
    return replace(
        finding,
        message=finding.message + message,
        details={**finding.details, "measured_advice": advice.value},
        severity=settings.severity_for(finding.rule, Escalation.MITIGATED),
    )


def _bounded(metric: Metric, margin: float) -> bool:
    """Whether the 95% interval of the change lies within ``margin`` either way (accuracy
    points as a fraction; a mean squared error relative to its stored value)."""
    change = metric.change
    if change is None:
        return False
    scale = 1.0 if metric.higher_is_better else max(abs(metric.stored), 1e-12)
    return max(abs(change.low), abs(change.high)) / scale <= margin


def _keep(metric: Metric) -> str:
    """What the labelled measurement says of statistics the network works with."""
    samples = metric.change.samples if metric.change is not None else None
    where = f"measured on {samples} labelled samples" if samples else "measured"
    return (
        f"; {where}, the network works with these statistics ({metric.name} "
        f"{metric.format(metric.stored)}) and re-estimating them would "
        f"{metric.change_with_interval()}: keep them ({EFFECT_RULE}: do not recalibrate)"
    )


def _refined(
    finding: Finding,
    stale: Finding | None,
    metric: Metric | None,
    advice: Advice | None,
    settings: Settings,
) -> Finding:
    message, details = finding.message, dict(finding.details)
    severity = finding.severity
    if stale is not None:
        shift, factor = stale.details.get("mean_shift"), stale.details.get("variance_factor")
        message += (
            f"; on the data its statistics are off by a typical mean shift of {shift:.3g} "
            f"standard deviations and a variance factor of {factor:.3g} ({STALENESS_RULE})"
            if isinstance(shift, float) and isinstance(factor, float)
            else f"; {stale.message} ({STALENESS_RULE})"
        )
        details["measured_staleness"] = dict(stale.details)
        severity = max(severity, stale.severity)
    if metric is not None and advice is not None:
        details["measured_advice"] = advice.value
        samples = metric.change.samples if metric.change is not None else None
        where = f"measured on {samples} labelled samples" if samples else "measured"
        if advice is Advice.KEEP:
            message += _keep(metric)
            severity = settings.severity_for(finding.rule, Escalation.MITIGATED)
        elif advice is Advice.RECALIBRATE:
            message += (
                f"; {where}, re-estimating them would {metric.change_with_interval()}: "
                f"recalibrate with --include-untouched ({EFFECT_RULE})"
            )
        elif advice is Advice.INCONCLUSIVE:
            message += f"; what re-estimating would do is {inconclusive(metric)} ({EFFECT_RULE})"
    return replace(finding, message=message, details=details, severity=severity)
