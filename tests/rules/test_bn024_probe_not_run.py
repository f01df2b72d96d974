from __future__ import annotations

from bncheck.formats import NEEDS_ARCHITECTURE
from bncheck.probe.results import CodeReference, ProbeResult
from bncheck.rules import bn024_probe_not_run as rule
from tests.rules.conftest import probe_result, problems


def not_run(
    skipped: str, needs: str | None, content: tuple[CodeReference, ...] = ()
) -> ProbeResult:
    return ProbeResult("ckpt.weights.h5", None, content, False, skipped=skipped, needs=needs)


def test_a_probe_an_option_would_run_fails_the_gate() -> None:
    [problem] = problems(rule, not_run(NEEDS_ARCHITECTURE, "--architecture"))
    assert problem.message == f"the probe was asked for and did not run: {NEEDS_ARCHITECTURE}"
    assert problem.details == {"needs": "--architecture"}


def test_a_probe_that_ran_or_that_nothing_would_run_is_not_reported() -> None:
    assert problems(rule, probe_result()) == []
    checkpoint = not_run("a checkpoint holds no architecture to run", None)
    assert problems(rule, checkpoint) == []


def test_a_probe_refused_for_its_code_is_left_to_bn017() -> None:
    code = CodeReference("lambda", "model/lambda", "a Python function")
    assert problems(rule, not_run("refused", "--architecture", (code,))) == []
