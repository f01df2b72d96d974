from bncheck.probe.results import INFERENCE
from bncheck.rules import bn015_mode_divergence as rule
from tests.rules.conftest import judge, measured_output, probe_result


def test_agreeing_modes_pass() -> None:
    assert judge(rule, probe_result()) == []


def test_large_relative_error() -> None:
    result = probe_result(outputs=(measured_output(relative_error=0.65, top1_agreement=0.69),))
    [problem] = judge(rule, result)
    assert problem.details["relative_error"] == 0.65
    assert problem.details["top1_agreement"] == 0.69
    assert "69%" in problem.message


def test_low_top1_agreement_alone_is_enough() -> None:
    result = probe_result(outputs=(measured_output(relative_error=0.1, top1_agreement=0.75),))
    assert len(judge(rule, result)) == 1


def test_regression_output_without_top1() -> None:
    result = probe_result(outputs=(measured_output(relative_error=0.4, top1_agreement=None),))
    [problem] = judge(rule, result)
    assert "top-1" not in problem.message


def test_synthetic_data_cannot_judge() -> None:
    result = probe_result(outputs=(measured_output(relative_error=2.0),), real=False)
    assert judge(rule, result) == []


def test_inference_only_probe_cannot_judge() -> None:
    output = measured_output(relative_error=None, top1_agreement=None)
    assert judge(rule, probe_result(outputs=(output,), modes=(INFERENCE,))) == []


def test_thresholds_are_options() -> None:
    result = probe_result(outputs=(measured_output(relative_error=0.2),))
    assert judge(rule, result) == []
    assert len(judge(rule, result, max_relative_error=0.1)) == 1
