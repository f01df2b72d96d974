"""The runner: read each input, apply the enabled rules, stamp their problems into findings."""

from __future__ import annotations

from collections.abc import Iterable

from bncheck.errors import ModelReadError
from bncheck.findings import Finding, ModelResult, Problem, Report
from bncheck.model import ModelDescription
from bncheck.readers import read_model
from bncheck.rules import RULES
from bncheck.settings import Settings


def inspect_paths(paths: Iterable[str], settings: Settings) -> Report:
    """Statically inspect every path; an unreadable one becomes a result with an error."""
    return Report(
        models=tuple(inspect_path(path, settings) for path in paths), fail_on=settings.fail_on
    )


def inspect_path(path: str, settings: Settings) -> ModelResult:
    try:
        description = read_model(path)
    except ModelReadError as exc:
        return ModelResult(path=path, format=None, error=str(exc))
    return ModelResult(
        path=path,
        format=description.format,
        description=description,
        findings=tuple(static_findings(description, settings)),
    )


def static_findings(description: ModelDescription, settings: Settings) -> list[Finding]:
    """Run every enabled static rule over every layer, in rule order then layer order."""
    findings = []
    for rule_id, rule in RULES.items():
        if rule.NEEDS != "static" or not settings.enabled(rule_id):
            continue
        options = settings.rules[rule_id].options
        for layer in description.layers:
            findings += stamp_all(rule_id, rule.check(layer, options), settings)
    return findings


def stamp_all(rule_id: str, problems: Iterable[Problem], settings: Settings) -> list[Finding]:
    """Stamp a rule's problems, leaving out those on layers configured to ignore the rule."""
    return [
        stamp(rule_id, problem, settings)
        for problem in problems
        if not settings.ignored_at(rule_id, problem.layer)
    ]


def stamp(rule_id: str, problem: Problem, settings: Settings) -> Finding:
    """Turn a rule's problem into a finding with the rule's identity and configured severity."""
    return Finding(
        rule=rule_id,
        name=RULES[rule_id].NAME,
        severity=settings.severity_for(rule_id, problem.escalation),
        layer=problem.layer,
        message=problem.message,
        details=dict(problem.details),
    )
