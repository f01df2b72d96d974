from bncheck.rules import bn007_frozen_layer as rule
from tests.rules.conftest import layer, problems


def test_frozen_layer_is_reported() -> None:
    [problem] = problems(rule, layer(trainable=False))
    assert "inference mode" in problem.message


def test_trainable_and_unknown_pass() -> None:
    assert problems(rule, layer(trainable=True)) == []
    assert problems(rule, layer(trainable=None)) == []
