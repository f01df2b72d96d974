import numpy as np
import pytest

from bncheck.findings import Escalation
from bncheck.rules import bn014_stale_moving_stats as rule
from tests.rules.conftest import judge, measured_layer, probe_result

MOVING = {"moving_mean": [0.0, 0.0, 0.0, 0.0], "moving_variance": [1.0, 1.0, 1.0, 1.0]}


def test_matching_statistics_pass() -> None:
    assert judge(rule, probe_result((measured_layer(),))) == []


def test_shifted_mean_is_reported_with_figures() -> None:
    layer = measured_layer(input_mean=[2.0, 0.0, 0.0, 0.0], input_variance=[1.0] * 4, **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    # channel 0 is 2/sqrt(1.001) standard deviations off; the RMS over 4 channels is half that
    assert problem.details["mean_shift"] == pytest.approx(1.0 / np.sqrt(1.001))
    assert problem.details["variance_ratio"] == pytest.approx(1.0)
    assert list(problem.details["worst_shift_channels"])[0] == 0
    assert problem.escalation is None
    assert problem.layer == "model/bn"


def test_variance_ratio_in_either_direction() -> None:
    for variance in (0.25, 4.0):
        layer = measured_layer(input_mean=[0.0] * 4, input_variance=[variance] * 4, **MOVING)
        [problem] = judge(rule, probe_result((layer,)))
        assert max(problem.details["variance_ratio"], 1.0) > 2.0


def test_severe_staleness_escalates() -> None:
    layer = measured_layer(input_mean=[0.0] * 4, input_variance=[0.04] * 4, **MOVING)
    [problem] = judge(rule, probe_result((layer,)))
    assert problem.details["variance_ratio"] == pytest.approx(1.001 / 0.041)
    assert problem.escalation is Escalation.SEVERE


def test_frozen_layer_is_information_only() -> None:
    layer = measured_layer(
        trainable=False, input_mean=[0.0] * 4, input_variance=[0.04] * 4, **MOVING
    )
    [problem] = judge(rule, probe_result((layer,)))
    assert problem.escalation is Escalation.MITIGATED
    assert problem.details["frozen"] is True


def test_worst_layer_comes_first() -> None:
    mild = measured_layer(path="m/mild", input_mean=[0.0] * 4, input_variance=[0.4] * 4, **MOVING)
    bad = measured_layer(path="m/bad", input_mean=[0.0] * 4, input_variance=[0.01] * 4, **MOVING)
    assert [p.layer for p in judge(rule, probe_result((mild, bad)))] == ["m/bad", "m/mild"]


def test_synthetic_data_cannot_judge() -> None:
    layer = measured_layer(input_mean=[5.0] * 4, input_variance=[0.01] * 4, **MOVING)
    assert judge(rule, probe_result((layer,), real=False)) == []


def test_non_finite_statistics_are_left_to_static_rules() -> None:
    layer = measured_layer(moving_variance=[np.nan, 1.0, 1.0, 1.0], input_variance=[1.0] * 4)
    assert judge(rule, probe_result((layer,))) == []


def test_thresholds_are_options() -> None:
    layer = measured_layer(input_mean=[0.0] * 4, input_variance=[0.6] * 4, **MOVING)
    assert judge(rule, probe_result((layer,))) == []
    assert len(judge(rule, probe_result((layer,)), max_variance_ratio=1.5)) == 1
