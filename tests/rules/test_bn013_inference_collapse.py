from bncheck.probe.results import INFERENCE
from bncheck.rules import bn013_inference_collapse as rule
from tests.rules.conftest import judge, measured_layer, measured_output, probe_result

COLLAPSED_OUTPUT = measured_output(inference_spread=4e-7, training_spread=0.035)


def deep_layers(first_collapsed: int) -> tuple:
    return tuple(
        measured_layer(
            path=f"deep/bn{index}",
            inference_spread=0.3 if index < first_collapsed else 0.003,
            training_spread=0.8,
        )
        for index in range(1, 6)
    )


def test_collapse_names_the_first_layer_that_stops_varying() -> None:
    [problem] = judge(rule, probe_result(deep_layers(3), (COLLAPSED_OUTPUT,)))
    assert problem.layer == "deep/bn3"
    assert problem.details["first_layer_failure"] == "stop varying"
    assert problem.details["first_layer_inference_spread"] == 0.003
    assert "nearly identical for every input" in problem.message
    assert "stop varying from deep/bn3 on" in problem.message


def test_blow_up_is_localised_too() -> None:
    layers = (
        measured_layer(path="m/bn1"),
        measured_layer(path="m/bn2", inference_rms=500.0, training_rms=1.0),
    )
    blown = measured_output(inference_rms=1e4, training_rms=0.6)
    [problem] = judge(rule, probe_result(layers, (blown,)))
    assert problem.layer == "m/bn2"
    assert problem.details["first_layer_failure"] == "blow up"
    assert "blows up" in problem.message


def test_non_finite_outputs() -> None:
    layers = (measured_layer(path="m/bn1", inference_nonfinite=12),)
    [problem] = judge(rule, probe_result(layers, (measured_output(inference_nonfinite=64),)))
    assert "NaN/Inf" in problem.message
    assert problem.details["first_layer_failure"] == "turn NaN/Inf"


def test_healthy_model_passes() -> None:
    assert judge(rule, probe_result(deep_layers(99))) == []


def test_saturated_output_without_a_collapsing_layer_is_not_a_collapse() -> None:
    assert judge(rule, probe_result(deep_layers(99), (COLLAPSED_OUTPUT,))) == []


def test_without_visible_layers_the_output_decides() -> None:
    [problem] = judge(rule, probe_result((), (COLLAPSED_OUTPUT,), loader="tf-keras SavedModel"))
    assert problem.layer is None


def test_inference_only_probe_cannot_judge() -> None:
    result = probe_result(deep_layers(3), (COLLAPSED_OUTPUT,), modes=(INFERENCE,))
    assert judge(rule, result) == []


def test_spread_ratio_option() -> None:
    output = measured_output(inference_spread=0.02, training_spread=0.5)
    assert judge(rule, probe_result(deep_layers(3), (output,))) == []
    assert len(judge(rule, probe_result(deep_layers(3), (output,)), max_spread_ratio=0.05)) == 1
