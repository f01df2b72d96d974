from __future__ import annotations

from bncheck.model import IncompleteLayer, ModelDescription
from bncheck.rules import bn018_incomplete_layer_weights as rule
from tests.rules.conftest import layer, problems


def description(*incomplete: IncompleteLayer) -> ModelDescription:
    return ModelDescription("m.h5", "h5", layers=(layer(),), incomplete=incomplete)


def test_a_missing_statistic_is_reported_with_what_is_there() -> None:
    missing = IncompleteLayer(
        "model_1/bn", ("gamma", "beta", "moving_mean"), ("moving_variance",), "model_weights/bn"
    )
    [problem] = problems(rule, description(missing))
    assert problem.layer == "model_1/bn"
    assert problem.message.startswith(
        "the file has gamma, beta and moving_mean but no moving_variance: Keras cannot load"
    )
    assert problem.details == {
        "present": ["gamma", "beta", "moving_mean"],
        "missing": ["moving_variance"],
        "source": "model_weights/bn",
    }


def test_a_layer_without_any_array_is_reported() -> None:
    empty = IncompleteLayer("m/bn", (), ("gamma", "beta", "moving_mean", "moving_variance"), "g")
    [problem] = problems(rule, description(empty))
    assert problem.message == (
        "the file has none of the layer's arrays (gamma, beta, moving_mean and moving_variance): "
        "Keras cannot load this layer as saved"
    )


def test_complete_files_pass() -> None:
    assert problems(rule, description()) == []
