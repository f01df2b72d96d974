from bncheck.findings import Escalation
from bncheck.rules import bn010_hardcoded_training_call as rule
from tests.rules.conftest import layer, problems


def test_training_true_call() -> None:
    [problem] = problems(rule, layer(call_kwargs=({"mask": None}, {"training": True})))
    assert problem.details == {"calls": [1], "frozen": False}
    assert problem.escalation is None


def test_frozen_layer_is_mitigated() -> None:
    [problem] = problems(rule, layer(trainable=False, call_kwargs=({"training": True},)))
    assert problem.escalation is Escalation.MITIGATED


def test_training_false_or_absent_passes() -> None:
    assert problems(rule, layer(call_kwargs=({"training": False}, {}))) == []
    assert problems(rule, layer()) == []
