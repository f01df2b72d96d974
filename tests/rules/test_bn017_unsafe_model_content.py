from bncheck.probe.results import CodeReference
from bncheck.rules import bn017_unsafe_model_content as rule
from tests.rules.conftest import judge, probe_result

LAMBDA = CodeReference("lambda", "cnn/identity", "holding marshalled Python bytecode")
FOREIGN = CodeReference("function", "cnn/head", "os.system")


def test_clean_model_passes() -> None:
    assert judge(rule, probe_result()) == []


def test_skipped_probe_lists_the_code() -> None:
    result = probe_result(content=(LAMBDA, FOREIGN), skipped="the file holds code")
    [problem] = judge(rule, result)
    assert "Lambda layer holding marshalled Python bytecode (cnn/identity)" in problem.message
    assert "function os.system (cnn/head)" in problem.message
    assert "skipped" in problem.message
    assert problem.details["probe_ran"] is False
    assert problem.details["references"][1] == {
        "kind": "function",
        "where": "cnn/head",
        "detail": "os.system",
    }


def test_unsafe_run_still_warns() -> None:
    [problem] = judge(rule, probe_result(content=(LAMBDA,), unsafe=True))
    assert "--unsafe" in problem.message
    assert problem.details["probe_ran"] is True
