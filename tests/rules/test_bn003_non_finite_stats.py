import math

from bncheck.rules import bn003_non_finite_stats as rule
from tests.rules.conftest import layer, problems


def test_nan_in_variance() -> None:
    [problem] = problems(rule, layer(moving_variance=[0.5, math.nan, 1.0, 1.0]))
    assert problem.details["arrays"] == {"moving_variance": {"nan": 1, "inf": 0, "channels": 4}}


def test_inf_in_gamma_and_nan_in_mean_are_both_counted() -> None:
    [problem] = problems(rule, layer(gamma=[math.inf, 1, 1, 1], moving_mean=[math.nan] * 4))
    assert problem.details["arrays"]["gamma"]["inf"] == 1
    assert problem.details["arrays"]["moving_mean"]["nan"] == 4


def test_finite_arrays_pass() -> None:
    assert problems(rule, layer()) == []
