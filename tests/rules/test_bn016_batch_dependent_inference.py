from bncheck.rules import bn016_batch_dependent_inference as rule
from tests.rules.conftest import judge, measured_layer, measured_output, probe_result


def test_batch_independent_inference_passes() -> None:
    layers = (measured_layer(moving_stats_error=2e-7),)
    assert judge(rule, probe_result(layers, (measured_output(batch_dependence=3e-7),))) == []


def test_batch_dependence_names_the_layers_using_batch_statistics() -> None:
    layers = (
        measured_layer(path="cnn/bn1", moving_stats_error=1.19),
        measured_layer(path="cnn/bn2", moving_stats_error=0.45),
        measured_layer(path="cnn/bn3"),
    )
    [problem] = judge(rule, probe_result(layers, (measured_output(batch_dependence=0.066),)))
    assert problem.layer == "cnn/bn1"
    assert problem.details["layers"] == {"cnn/bn1": 1.19, "cnn/bn2": 0.45}
    assert problem.details["outputs"] == {"head": 0.066}
    assert "first 16 samples" in problem.message


def test_without_visible_layers_the_output_is_reported() -> None:
    [problem] = judge(rule, probe_result((), (measured_output(batch_dependence=0.3),)))
    assert problem.layer is None


def test_not_measured_is_not_reported() -> None:
    assert judge(rule, probe_result((), (measured_output(batch_dependence=None),))) == []


def test_tolerance_option() -> None:
    result = probe_result((), (measured_output(batch_dependence=1e-3),))
    assert len(judge(rule, result)) == 1
    assert judge(rule, result, tolerance=1e-2) == []
