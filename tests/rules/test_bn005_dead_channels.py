from bncheck.rules import bn005_dead_channels as rule
from tests.rules.conftest import layer, problems


def test_zero_variance_channels_are_counted() -> None:
    [problem] = problems(rule, layer(moving_variance=[0.0, 1e-14, 0.3, 1.0]))
    assert problem.details == {"channels": 2, "fraction": 0.5, "first_channels": [0, 1]}


def test_threshold_option() -> None:
    small = layer(moving_variance=[1e-8, 0.5, 0.3, 1.0])
    assert problems(rule, small) == []
    [problem] = problems(rule, small, max_variance=1e-6)
    assert problem.details["channels"] == 1


def test_negative_variance_is_not_dead() -> None:
    assert problems(rule, layer(moving_variance=[-1.0, 0.5, 0.3, 1.0])) == []


def test_healthy_layer_passes() -> None:
    assert problems(rule, layer()) == []
