from bncheck.rules import bn004_negative_variance as rule
from tests.rules.conftest import layer, problems


def test_negative_variance() -> None:
    [problem] = problems(rule, layer(moving_variance=[0.5, -0.25, 1.0, -2.0]))
    assert problem.details == {"channels": 2, "min": -2.0, "first_channels": [1, 3]}


def test_zero_variance_is_not_negative() -> None:
    assert problems(rule, layer(moving_variance=[0.0, 0.5, 1.0, 1.0])) == []


def test_positive_variance_passes() -> None:
    assert problems(rule, layer()) == []
