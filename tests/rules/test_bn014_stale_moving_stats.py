import numpy as np
import pytest

from bncheck.findings import Escalation
from bncheck.rules import bn014_stale_moving_stats as rule
from tests.rules.conftest import judge, measured_layer, population, probe_result

MOVING = {"moving_mean": [0.0, 0.0, 0.0, 0.0], "moving_variance": [1.0, 1.0, 1.0, 1.0]}


def test_matching_statistics_pass() -> None:
    assert judge(rule, probe_result((measured_layer(),))) == []


def test_shifted_mean_is_reported_with_figures() -> None:
    layer = measured_layer(population=population([2.0, 0.0, 0.0, 0.0], [1.0] * 4), **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    # channel 0 is 2/sqrt(1.001) standard deviations off; the RMS over 4 channels is half that
    assert problem.details["mean_shift"] == pytest.approx(1.0 / np.sqrt(1.001))
    assert problem.details["variance_factor"] == pytest.approx(1.0)
    assert list(problem.details["worst_shift_channels"])[0] == 0
    assert problem.escalation is None
    assert problem.layer == "model/bn"


@pytest.mark.parametrize(("variance", "words"), [(0.25, "3.99x the measured"), (4.0, "1/4 of")])
def test_variance_factor_in_either_direction(variance: float, words: str) -> None:
    layer = measured_layer(population=population([0.0] * 4, [variance] * 4), **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    assert problem.details["variance_factor"] == pytest.approx(
        max(1.001 / (variance + 0.001), (variance + 0.001) / 1.001)
    )
    ratios = problem.details["worst_variance_ratio_channels"]
    assert all(ratio == pytest.approx(1.001 / (variance + 0.001)) for ratio in ratios.values())
    assert words in problem.message


def test_severe_staleness_escalates() -> None:
    layer = measured_layer(population=population([0.0] * 4, [0.04] * 4), **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    assert problem.details["variance_factor"] == pytest.approx(1.001 / 0.041)
    assert problem.escalation is Escalation.SEVERE


def test_the_estimate_noise_is_not_staleness() -> None:
    """A shift within the estimate's own standard error is noise; the same shift measured
    precisely is staleness."""
    shifted = population([0.8] * 4, [1.0] * 4)
    assert len(judge(rule, probe_result((measured_layer(population=shifted, **MOVING),)))) == 1
    noisy = population([0.8] * 4, [1.0] * 4, mean_error=0.8)
    assert judge(rule, probe_result((measured_layer(population=noisy, **MOVING),))) == []


def test_variance_noise_is_taken_out_too() -> None:
    precise = population([0.0] * 4, [0.4] * 4)
    assert len(judge(rule, probe_result((measured_layer(population=precise, **MOVING),)))) == 1
    noisy = population([0.0] * 4, [0.4] * 4, variance_error=0.4)
    assert judge(rule, probe_result((measured_layer(population=noisy, **MOVING),))) == []


def test_frozen_layer_is_information_only() -> None:
    layer = measured_layer(trainable=False, population=population([0.0] * 4, [0.04] * 4), **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    assert problem.escalation is Escalation.MITIGATED
    assert problem.details["frozen"] is True
    assert "re-estimating them can break those" in problem.message
    assert "--include-frozen" in problem.message


@pytest.mark.parametrize("momentum", [0.99, 1.0])
def test_statistics_that_never_moved_are_left_to_bn001_and_bn008(momentum: float) -> None:
    """Untouched statistics are not stale ones: BN001 (the network may have learned with them)
    or BN008 (momentum 1.0) reports them once, and BN015 measures what replacing them does."""
    stale = {"population": population([0.0] * 4, [0.04] * 4), **MOVING}
    untouched = measured_layer(untouched=True, momentum=momentum, **stale)
    assert judge(rule, probe_result((untouched,))) == []
    assert len(judge(rule, probe_result((measured_layer(**stale),)))) == 1


def test_worst_layer_comes_first() -> None:
    mild = measured_layer(path="m/mild", population=population([0.0] * 4, [0.4] * 4), **MOVING)
    bad = measured_layer(path="m/bad", population=population([0.0] * 4, [0.01] * 4), **MOVING)
    assert [p.layer for p in judge(rule, probe_result((mild, bad)))] == ["m/bad", "m/mild"]


def test_synthetic_data_cannot_judge() -> None:
    layer = measured_layer(population=population([5.0] * 4, [0.01] * 4), **MOVING)
    assert judge(rule, probe_result((layer,), real=False)) == []


def test_layer_without_estimate_cannot_be_judged() -> None:
    assert judge(rule, probe_result((measured_layer(population=None, **MOVING),))) == []


def test_non_finite_statistics_are_left_to_static_rules() -> None:
    layer = measured_layer(moving_variance=[np.nan, 1.0, 1.0, 1.0])
    assert judge(rule, probe_result((layer,))) == []


def test_thresholds_are_options() -> None:
    layer = measured_layer(population=population([0.0] * 4, [0.6] * 4), **MOVING)
    assert judge(rule, probe_result((layer,))) == []
    assert len(judge(rule, probe_result((layer,)), max_variance_factor=1.5)) == 1
