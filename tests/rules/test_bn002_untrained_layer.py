from bncheck.rules import bn002_untrained_layer as rule
from tests.rules.conftest import layer, problems

INITIAL = {"gamma": [1] * 4, "beta": [0] * 4, "moving_mean": [0] * 4, "moving_variance": [1] * 4}


def test_all_arrays_at_initial_values() -> None:
    [problem] = problems(rule, layer(**INITIAL))
    assert problem.details["arrays"] == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_layer_with_fewer_arrays() -> None:
    [problem] = problems(rule, layer(**{**INITIAL, "gamma": None, "scale": False}))
    assert problem.details["arrays"] == ["beta", "moving_mean", "moving_variance"]


def test_trained_layer_passes() -> None:
    assert problems(rule, layer()) == []


def test_trained_gamma_only_passes() -> None:
    assert problems(rule, layer(**{**INITIAL, "gamma": [1, 1, 1.01, 1]})) == []


def test_assumed_initial_values_are_reported() -> None:
    from bncheck.model import InitialValues

    [problem] = problems(rule, layer(initial=InitialValues(assumed=True), **INITIAL))
    assert problem.details["initial_values_assumed"] is True
