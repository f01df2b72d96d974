import math
from dataclasses import replace

import pytest

from bncheck.rules import bn006_unstable_gain as rule
from tests.rules.conftest import layer, problems


def test_tiny_variance_with_tiny_epsilon() -> None:
    [problem] = problems(rule, layer(moving_variance=[0.5, 1e-10, 1.0, 1.0], epsilon=1e-9))
    assert problem.details["worst_channel"] == 1
    assert problem.details["worst_gain"] == pytest.approx(1.1 / math.sqrt(1e-10 + 1e-9), rel=1e-5)
    assert problem.details["channels"] == 1


def test_default_epsilon_keeps_the_gain_bounded() -> None:
    assert problems(rule, layer(moving_variance=[0.5, 0.0, 1.0, 1.0])) == []


def test_threshold_option() -> None:
    # gain of channel 1 is 1.1 / sqrt(1e-3) = 34.8
    flagged = problems(rule, layer(moving_variance=[0.5, 0.0, 1.0, 1.0]), max_gain=30)
    assert [p.details["worst_channel"] for p in flagged] == [1]


def test_scale_false_uses_unit_gamma() -> None:
    [problem] = problems(
        rule, layer(gamma=None, scale=False, moving_variance=[0.0] * 4, epsilon=1e-8)
    )
    assert problem.details["worst_gain"] == pytest.approx(1e4, rel=1e-6)


def test_unknown_epsilon_is_assumed_and_said() -> None:
    [problem] = problems(rule, layer(epsilon=None, moving_variance=[0.0] * 4), max_gain=30)
    assert problem.details["epsilon_assumed"] is True


def test_nan_and_negative_variance_are_other_rules_business() -> None:
    assert problems(rule, layer(moving_variance=[math.nan, -0.5, 1.0, 1.0], epsilon=1e-9)) == []


def test_unknown_epsilon_is_the_frameworks_default() -> None:
    # gamma 1, variance 1e-4: gain 31.5 with Keras's 1e-3, 99.5 with PyTorch's 1e-5.
    tiny = layer(epsilon=None, gamma=[1, 1, 1, 1], moving_variance=[1e-4, 1, 1, 1])
    assert problems(rule, tiny, max_gain=50) == []
    [problem] = problems(rule, replace(tiny, framework="pytorch"), max_gain=50)
    assert problem.details["epsilon"] == 1e-5 and problem.details["epsilon_assumed"] is True
