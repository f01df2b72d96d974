"""Re-estimating the statistics from the data would change the model's outputs.

This asks what ``bncheck recalibrate`` would change. Over all sampled data (``--data``, up to
``--samples``), the probe runs the model in inference mode twice: with the statistics stored in
the file, and with the trainable layers' statistics re-estimated from the data (BN014's
population estimate; frozen layers keep theirs, as recalibrate does by default). Each half of
the batches (even, odd) runs with the statistics estimated from the other half: statistics
estimated from some data fit that data by construction, and measured on it they would promise
more than a recalibration gives on new data (on a few hundred samples, more than the thresholds
below). Like is compared with like: inference mode both times, so a healthy model, whose stored
statistics already fit its weights, changes little. Training-mode outputs are no reference: a
network that learned without batch statistics (BN001) disagrees with them by design, and a single
batch is too noisy to judge. One batch of data is re-estimated in its two halves, each with
the other's statistics; a batch of fewer than 32 samples is not judged, and the report says so.

Where the layers are out of sight (a SavedModel in which no BatchNorm op is found, or whose
serving graph cannot be frozen) nothing can be re-estimated. With labels, the
rule then compares inference with training mode, in one direction only: inference with the stored
statistics far worse than training mode (by the same thresholds) means they do not fit the data.

With labels (an ``.npz`` holding ``y``, ``--labels``, or an image folder's class subfolders) the
finding rests on measurement: the metric (accuracy for classifiers, the mean squared error
otherwise) with the stored statistics, with re-estimated ones, and in training mode. Every
change carries its 95% interval, from a paired bootstrap over the samples (2,000 resamples, a
fixed seed: the same data gives the same interval): "raise accuracy from 90.0% to 93.1% (+3.1
points, 95% interval -0.8 to +7.0)". Advice is given only when the interval excludes no change;
otherwise the finding is information that says "inconclusive on N samples: give more data" (on
112 samples a regression model's error rose 26% with re-estimated statistics, yet recalibrating
from its whole training data lowered it). A gain the interval shows, whatever its size, is the
advice to recalibrate, and is what ``bncheck recalibrate`` and ``bncheck.torch.recalibrate``
write: one rule (``bncheck.verdict.metric_advice``) decides both, so inspect never calls a
change too small that recalibrate writes, nor advises one that recalibrate refuses. The gain is
a warning, and above ``max_metric_gain`` an error that fails the gate (5.6 points lost by stale
statistics, shown by the interval, is a broken model, as BN014's severe staleness is); a loss
is information that says not to recalibrate, and why when the cause is known. The same
measurement settles BN001 and BN002 on the layers whose statistics never moved (see
``bncheck.verdict``): a measured loss makes them information. Without labels,
the share of samples whose top-1 class would change (classifiers) or the relative change of the
outputs decides, and the finding says that labels would tell whether the change is for the
better.

Why it happens: stale statistics (BN014) change outputs when replaced; so do statistics that
were never updated (BN001, BN008), where the measurement decides whether the network needs
them replaced (momentum 1.0, updates never run) or learned with them (a loop without
``training=True``).

How to fix: when re-estimated statistics measure better, ``bncheck recalibrate MODEL --data DATA
--validate HELD_OUT -o FIXED``; it refuses to write a model that measures worse. When they measure
worse, keep the model, or retrain with ``training=True`` if its metric is not good enough.

Options:
  max_changed_predictions: without labels, a larger share of changed top-1 classes is reported.
  severe_changed_predictions: without labels, a larger share escalates the finding (error).
  max_relative_change: without labels, a larger relative change of a non-classifier output is
    reported.
  severe_relative_change: without labels, a larger relative change escalates the finding.
  min_metric_change: with labels, a smaller change that the interval cannot tell from none is
    not reported (accuracy as a fraction; for the mean squared error, relative to its stored
    value).
  max_metric_gain: with labels, a larger gain the interval shows is an error; where the layers
    are out of sight (a SavedModel without BatchNorm ops found), a larger gain of training mode
    over inference is reported.
  severe_metric_gain: where the layers are out of sight, a larger gain of training mode over
    inference escalates the finding (error).

Passing: a 10-class digit CNN fit for 20 epochs with a decaying learning rate: 0.1% of top-1
classes change, accuracy on its training digits 99.8% either way.
Failing: the same CNN fit for one epoch at learning rate 0.01: re-estimating would raise its
accuracy from 9.5% to 95.3% (90% of top-1 classes change).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck import verdict
from bncheck.findings import Escalation, Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import Metric, OutputMeasurement, ProbeResult

ID = "BN015"
NAME = "recalibration-effect"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {
    "max_changed_predictions": 0.1,
    "severe_changed_predictions": 0.5,
    "max_relative_change": 0.25,
    "severe_relative_change": 1.0,
    "min_metric_change": 0.02,
    "max_metric_gain": 0.05,
    "severe_metric_gain": 0.1,
}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    data = result.data
    if not result.real_data or (data is not None and data.batches < 2 and not data.split_batch):
        return  # one small batch: nothing to re-estimate it from but itself
    untrained = result.learned_without_batch_statistics
    for output in result.outputs:
        if output.reestimated_relative_error is None:
            if not result.layers and output.metric is not None:
                # The layers are out of sight (a SavedModel whose BatchNorm ops were not found):
                # training mode, each batch with its own statistics, is what there is to
                # compare with.
                gap = _training_mode_gap(output, output.metric, options, result.loader)
                if gap is not None:
                    yield gap
            continue
        details: dict[str, object] = {
            "output": output.name,
            "relative_change": output.reestimated_relative_error,
            "changed_predictions": _changed(output),
            "samples": result.data.samples if result.data else None,
            "never_updated_layers": list(untrained),
        }
        if output.metric is not None:
            problem = _measured(output, output.metric, untrained, options, details)
        else:
            problem = _unmeasured(output, untrained, options, details)
        if problem is not None:
            yield problem


#: The probe's loaders of other frameworks' files (``ProbeResult.loader``): ONNX and TorchScript.
_OTHER_FRAMEWORKS = ("onnxruntime", "torch.jit")


def _training_mode_gap(
    output: OutputMeasurement, metric: Metric, options: Mapping[str, float], loader: str | None
) -> Problem | None:
    """Inference with the stored statistics far worse than training mode, where nothing could
    be re-estimated. The other way round is no finding: a network that learned in inference mode
    does worse in training mode, and its statistics are the ones it needs."""
    if metric.training is None:
        return None
    gain = metric.training - metric.stored
    if not metric.higher_is_better:
        gain = -gain / max(metric.stored, 1e-12)
    if gain <= options["max_metric_gain"]:
        return None
    return Problem(
        message=(
            f"output {output.name!r}: {metric.name} {metric.format(metric.stored)} in inference "
            f"mode against {metric.format(metric.training)} in training mode, where each batch "
            "is normalised with its own statistics: the stored statistics do not fit the data. "
            + (
                "None of its BatchNorm layers could be seen running (see the notes), so none was "
                "re-estimated; bncheck recalibrate says what it needs"
                if loader in _OTHER_FRAMEWORKS
                else "The layers of this format cannot be re-estimated here: bncheck recalibrate "
                "the .keras or .h5 model it came from (a tf.keras SavedModel loads with "
                "tf_keras.models.load_model and saves as .h5)"
            )
        ),
        details={
            "output": output.name,
            "metric": metric.name,
            "stored": metric.stored,
            "training_mode": metric.training,
            "gain": gain,
        },
        escalation=Escalation.SEVERE if gain > options["severe_metric_gain"] else None,
    )


def _changed(output: OutputMeasurement) -> float | None:
    agreement = output.reestimated_top1_agreement
    return None if agreement is None else 1.0 - agreement


def _measured(
    output: OutputMeasurement,
    metric: Metric,
    untrained: tuple[str, ...],
    options: Mapping[str, float],
    details: dict[str, object],
) -> Problem | None:
    assert metric.reestimated is not None  # a re-estimate was run
    advice = verdict.metric_advice(metric, options)
    details.update(
        metric=metric.name,
        stored=metric.stored,
        reestimated=metric.reestimated,
        training_mode=metric.training,
        gain=verdict.relative_gain(metric),
        change_interval=(
            None if metric.change is None else [metric.change.low, metric.change.high]
        ),
        advice=advice.value,
    )
    if advice is verdict.Advice.NO_CHANGE:
        return None
    before = metric.format(metric.stored)
    change = metric.change_with_interval()
    training = (
        f"; {metric.format(metric.training)} in training mode"
        if metric.training is not None
        else ""
    )
    where = f"output {output.name!r}: "
    if advice is verdict.Advice.INCONCLUSIVE:
        return Problem(
            message=(
                f"{where}re-estimating the statistics from the data would {change}{training}: "
                f"{verdict.inconclusive_on(metric)}"
            ),
            details=details,
            escalation=Escalation.MITIGATED,
        )
    if advice is verdict.Advice.KEEP:
        cause = (
            f"; the network learned with its stored statistics ({len(untrained)} BN layer(s) "
            "never updated while gamma and beta trained, BN001); keep it if "
            f"{before} is good enough, or retrain with training=True"
            if untrained
            else ""
        )
        return Problem(
            message=(
                f"{where}re-estimating the statistics from the data would {change}{training}: "
                f"do not recalibrate{cause}"
            ),
            details=details,
            escalation=Escalation.MITIGATED,
        )
    relative = verdict.relative_gain(metric)
    # A loss the data shows, by the stored statistics, beyond max_metric_gain fails the gate,
    # as statistics measured that far off do for BN014.
    escalation = Escalation.SEVERE if relative > options["max_metric_gain"] else None
    # Untouched layers keep their statistics unless asked: the repair needs the flag.
    flag = " --include-untouched" if untrained else ""
    return Problem(
        message=(
            f"{where}re-estimating the statistics from the data would {change}{training}: "
            f"bncheck recalibrate{flag} writes them, verified with --validate HELD_OUT"
        ),
        details=details,
        escalation=escalation,
    )


def _unmeasured(
    output: OutputMeasurement,
    untrained: tuple[str, ...],
    options: Mapping[str, float],
    details: dict[str, object],
) -> Problem | None:
    changed = _changed(output)
    if changed is not None:
        limit, severe = options["max_changed_predictions"], options["severe_changed_predictions"]
        value = changed
        what = f"change the top-1 class of {changed:.0%} of the samples"
    else:
        limit, severe = options["max_relative_change"], options["severe_relative_change"]
        value = output.reestimated_relative_error or 0.0
        what = f"change the output by {value:.3g} relative to its norm"
    if value <= limit:
        return None
    caution = (
        f"; {len(untrained)} BN layer(s) never updated while gamma and beta trained (BN001): "
        "if the network learned with those statistics, recalibrating makes it worse"
        if untrained
        else ""
    )
    return Problem(
        message=(
            f"output {output.name!r}: re-estimating the statistics from the data would {what}; "
            f"labels (y in the .npz, or --labels) would measure whether for the better{caution}"
        ),
        details=details,
        escalation=Escalation.SEVERE if value > severe else None,
    )
