from bncheck.model import ModelDescription, PickledCall
from bncheck.rules import bn019_pickled_code as rule
from tests.rules.conftest import problems


def description(*calls: PickledCall) -> ModelDescription:
    return ModelDescription(path="m.pt", format="pytorch", layers=(), pickled_calls=calls)


def test_a_file_without_calls_passes() -> None:
    assert problems(rule, description()) == []


def test_every_call_is_named_with_where_it_is() -> None:
    calls = [PickledCall("posix.system", f"'touch {i}'", f"m/data.pkl, byte {i}") for i in range(5)]
    [problem] = problems(rule, description(*calls))
    assert problem.layer is None
    assert "posix.system('touch 0') at m/data.pkl, byte 0" in problem.message
    assert "and 2 more" in problem.message
    assert "bncheck called none of them" in problem.message
    assert len(problem.details["calls"]) == 5
    assert problem.details["calls"][4] == {
        "target": "posix.system",
        "arguments": "'touch 4'",
        "where": "m/data.pkl, byte 4",
    }
