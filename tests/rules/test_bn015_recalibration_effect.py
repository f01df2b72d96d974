from dataclasses import replace

import pytest

from bncheck.findings import Escalation
from bncheck.probe.results import Metric
from bncheck.rules import bn015_recalibration_effect as rule
from tests.rules.conftest import judge, measured_layer, measured_output, probe_result


def outputs(**fields: object) -> tuple:
    return (measured_output(**fields),)


def test_statistics_that_fit_change_nothing() -> None:
    assert judge(rule, probe_result()) == []


def test_training_mode_disagreement_is_no_finding() -> None:
    """Like is compared with like: training-mode outputs are no reference."""
    result = probe_result(outputs=outputs(relative_error=0.43, top1_agreement=0.6))
    assert judge(rule, result) == []


@pytest.mark.parametrize(
    ("agreement", "escalation"), [(0.95, "none"), (0.8, None), (0.3, Escalation.SEVERE)]
)
def test_changed_predictions_without_labels(agreement: float, escalation: object) -> None:
    found = judge(rule, probe_result(outputs=outputs(reestimated_top1_agreement=agreement)))
    if escalation == "none":
        assert found == []
        return
    [problem] = found
    assert problem.escalation is escalation
    assert f"change the top-1 class of {1 - agreement:.0%} of the samples" in problem.message
    assert "labels" in problem.message
    assert problem.details["changed_predictions"] == pytest.approx(1 - agreement)


def test_untouched_statistics_without_labels_warn_that_recalibrating_may_hurt() -> None:
    layers = (measured_layer(untouched=True),)
    result = probe_result(layers, outputs=outputs(reestimated_top1_agreement=0.7))
    [problem] = judge(rule, result)
    assert "recalibrating makes it worse" in problem.message
    assert problem.details["never_updated_layers"] == ["model/bn"]


def test_regression_output_without_labels_goes_by_relative_change() -> None:
    calm = outputs(reestimated_top1_agreement=None, reestimated_relative_error=0.1)
    assert judge(rule, probe_result(outputs=calm)) == []
    moved = outputs(reestimated_top1_agreement=None, reestimated_relative_error=0.6)
    [problem] = judge(rule, probe_result(outputs=moved))
    assert "top-1" not in problem.message and "0.6 relative to its norm" in problem.message


def accuracy(stored: float, reestimated: float, training: float | None = 0.9) -> tuple:
    metric = Metric("accuracy", stored, reestimated, training)
    return outputs(metric=metric, reestimated_top1_agreement=0.5)


def test_labels_decide_and_a_small_change_is_nothing() -> None:
    """Half the top-1 classes change, but accuracy stays: the measurement decides."""
    assert judge(rule, probe_result(outputs=accuracy(0.90, 0.91))) == []


@pytest.mark.parametrize(
    ("after", "escalation"),
    [(0.93, None), (0.99, Escalation.SEVERE), (0.5, Escalation.SEVERE)],
)
def test_measured_gain(after: float, escalation: object) -> None:
    stored = 0.9 if after > 0.9 else 0.2
    [problem] = judge(rule, probe_result(outputs=accuracy(stored, after)))
    assert problem.escalation is escalation
    assert f"would raise accuracy from {stored:.1%} to {after:.1%}" in problem.message
    assert "90.0% in training mode" in problem.message
    assert problem.details["gain"] == pytest.approx(after - stored)
    # A gain, small or not, is advice to recalibrate: what recalibrate writes.
    assert "bncheck recalibrate writes them" in problem.message
    assert problem.details["advice"] == "recalibrate"


def test_a_measured_gain_over_untouched_statistics_names_the_flag_recalibrate_needs() -> None:
    """Statistics lost in saving are untouched ones the network needs replaced: recalibrate
    keeps untouched layers unless asked, so the advice must say how to ask."""
    layers = (measured_layer(untouched=True),)
    [problem] = judge(rule, probe_result(layers, outputs=accuracy(0.51, 1.0)))
    assert "bncheck recalibrate --include-untouched writes them" in problem.message
    [plain] = judge(rule, probe_result(outputs=accuracy(0.51, 1.0)))
    assert "--include-untouched" not in plain.message


def test_measured_loss_says_do_not_recalibrate_and_why() -> None:
    layers = (measured_layer(untouched=True),)
    [problem] = judge(rule, probe_result(layers, outputs=accuracy(0.924, 0.62, 0.64)))
    assert problem.escalation is Escalation.MITIGATED
    assert "would lower accuracy from 92.4% to 62.0%" in problem.message
    assert "do not recalibrate" in problem.message
    assert "the network learned with its stored statistics" in problem.message
    # Without untouched statistics there is no known cause to name.
    [plain] = judge(rule, probe_result(outputs=accuracy(0.924, 0.62, 0.64)))
    assert "learned with" not in plain.message


def test_mean_squared_error_gain_is_relative() -> None:
    metric = Metric("mean squared error", 2.0, 1.0, 1.1)
    [problem] = judge(rule, probe_result(outputs=outputs(metric=metric)))
    assert problem.details["gain"] == pytest.approx(0.5)
    assert problem.escalation is Escalation.SEVERE
    # The verb follows the numbers: a smaller error is lowered, a larger one raised.
    assert "would lower mean squared error from 2 to 1;" in problem.message
    assert "bncheck recalibrate writes them" in problem.message
    worse = Metric("mean squared error", 0.45, 19.8, 19.4)
    [loss] = judge(rule, probe_result(outputs=outputs(metric=worse)))
    assert "would raise mean squared error from 0.45 to 19.8;" in loss.message
    assert "do not recalibrate" in loss.message


def test_synthetic_data_cannot_judge() -> None:
    result = probe_result(outputs=outputs(reestimated_top1_agreement=0.1), real=False)
    assert judge(rule, result) == []


def test_nothing_re_estimated_cannot_judge() -> None:
    frozen = outputs(reestimated_relative_error=None, reestimated_top1_agreement=None)
    assert judge(rule, probe_result(outputs=frozen)) == []


def test_thresholds_are_options() -> None:
    result = probe_result(outputs=outputs(reestimated_top1_agreement=0.95))
    assert judge(rule, result) == []
    assert len(judge(rule, result, max_changed_predictions=0.01)) == 1


def test_one_batch_of_data_is_not_judged() -> None:
    """Five samples re-estimate nothing: a large measured change from one batch is noise."""
    from bncheck.probe.results import ProbeData

    one_batch = ProbeData(
        real=True, source="tiny.npz", samples=5, inputs=(("image", (5, 8, 8, 1)),),
        batch_size=5, batches=1,
    )  # fmt: skip
    changed = outputs(reestimated_top1_agreement=0.0)
    assert judge(rule, probe_result(outputs=changed, data=one_batch)) == []
    two = probe_result(outputs=changed, data=replace(one_batch, samples=10, batches=2))
    assert len(judge(rule, two)) == 1
    # A batch large enough to split was re-estimated in halves, each from the other: judged.
    halves = replace(one_batch, samples=256, batch_size=256, split_batch=True)
    assert len(judge(rule, probe_result(outputs=changed, data=halves))) == 1


def test_out_of_sight_layers_are_judged_by_training_mode_one_way_only() -> None:
    """A SavedModel's layers cannot be re-estimated: inference far below training mode says the
    stored statistics do not fit; the reverse (a network that learned in inference mode) does
    not."""

    def savedmodel(stored: float, training: float, name: str = "accuracy") -> tuple:
        metric = Metric(name, stored, None, training)
        return outputs(metric=metric, reestimated_relative_error=None)

    [stale] = judge(rule, probe_result(outputs=savedmodel(0.107, 0.836)))
    assert stale.escalation is Escalation.SEVERE
    assert "accuracy 10.7% in inference mode against 83.6% in training mode" in stale.message
    assert "cannot be re-estimated here" in stale.message
    # A TorchScript or ONNX model whose layers were not seen is no Keras model's export.
    for loader in ("torch.jit", "onnxruntime"):
        other = probe_result(outputs=savedmodel(0.107, 0.836), loader=loader)
        [unseen] = judge(rule, other)
        assert "could be seen running" in unseen.message
        assert ".keras" not in unseen.message and "tf_keras" not in unseen.message
    [mild] = judge(rule, probe_result(outputs=savedmodel(0.80, 0.87)))
    assert mild.escalation is None
    assert judge(rule, probe_result(outputs=savedmodel(0.924, 0.64))) == []
    assert judge(rule, probe_result(outputs=savedmodel(0.97, 0.98))) == []
    [error] = judge(rule, probe_result(outputs=savedmodel(11.5, 3.1, "mean squared error")))
    assert error.escalation is Escalation.SEVERE
    # Visible layers that were not re-estimated (kept on purpose) are not judged this way.
    visible = probe_result((measured_layer(reestimated=False),), outputs=savedmodel(0.107, 0.836))
    assert judge(rule, visible) == []
