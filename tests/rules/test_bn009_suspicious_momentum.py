from bncheck.rules import bn009_suspicious_momentum as rule
from tests.rules.conftest import layer, problems


def test_pytorch_momentum() -> None:
    [problem] = problems(rule, layer(momentum=0.1))
    assert "Keras's 0.9" in problem.message
    assert problem.details == {"momentum": 0.1, "min_momentum": 0.5}


def test_threshold_option() -> None:
    assert problems(rule, layer(momentum=0.8)) == []
    assert len(problems(rule, layer(momentum=0.8), min_momentum=0.85)) == 1


def test_keras_momentum_passes() -> None:
    assert problems(rule, layer(momentum=0.9)) == []
    assert problems(rule, layer(momentum=None)) == []
