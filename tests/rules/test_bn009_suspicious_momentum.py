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


def test_pytorch_files_are_judged_in_pytorch_convention() -> None:
    # PyTorch's momentum weighs the new batch: its default 0.1 is healthy, Keras's 0.99 is not.
    assert problems(rule, layer(momentum=0.1, framework="pytorch")) == []
    [problem] = problems(rule, layer(momentum=0.99, framework="pytorch"))
    assert "in PyTorch momentum weighs the new batch" in problem.message
    assert "PyTorch's 0.01" in problem.message
    assert problem.details == {"momentum": 0.99, "min_momentum": 0.5}


def test_onnx_follows_keras_convention() -> None:
    # ONNX's momentum is the weight of the old statistics, as in Keras (PyTorch exports 0.9).
    assert problems(rule, layer(momentum=0.9, framework="onnx")) == []
    assert len(problems(rule, layer(momentum=0.1, framework="onnx"))) == 1
