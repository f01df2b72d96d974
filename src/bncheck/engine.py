"""The runner: read each input, apply the enabled rules, stamp their problems into findings.

Static rules judge each layer of the description. When a probe is asked for, the model is also
run (``bncheck.probe``) and the probe rules judge what it measured.
"""

from __future__ import annotations

from collections.abc import Iterable

from bncheck.errors import ModelReadError
from bncheck.findings import Finding, ModelResult, Problem, Report
from bncheck.model import ModelDescription
from bncheck.probe.results import ProbeResult
from bncheck.probe.runner import ProbeOptions, StepReporter, run_probe
from bncheck.readers import detect, read_model
from bncheck.rules import RULES
from bncheck.settings import Settings


def inspect_paths(
    paths: Iterable[str],
    settings: Settings,
    probe: ProbeOptions | None = None,
    step: StepReporter | None = None,
) -> Report:
    """Inspect every path (and probe it when asked); an unreadable one becomes a result with an
    error."""
    return Report(
        models=tuple(inspect_path(path, settings, probe, step) for path in paths),
        fail_on=settings.fail_on,
    )


def inspect_path(
    path: str,
    settings: Settings,
    probe: ProbeOptions | None = None,
    step: StepReporter | None = None,
) -> ModelResult:
    try:
        description = read_model(path)
    except ModelReadError as exc:
        if probe is None or not _is_savedmodel(path):
            return ModelResult(path=path, format=None, error=str(exc))
        # The probe runs SavedModels with TensorFlow even where the static reader cannot.
        description = ModelDescription(
            path=path, format="savedmodel", layers=(), notes=(f"static inspection: {exc}",)
        )
    findings = static_findings(description, settings)
    if probe is None:
        return ModelResult(path, description.format, description, tuple(findings))
    show = step or (lambda _: None)
    try:
        result = run_probe(path, probe, lambda text: show(f"{path}: {text}"))
    except ModelReadError as exc:
        return ModelResult(
            path, description.format, description, tuple(findings), error=f"probe: {exc}"
        )
    findings += probe_findings(result, settings)
    return ModelResult(path, description.format, description, tuple(findings), probe=result)


def _is_savedmodel(path: str) -> bool:
    try:
        return detect.sniff(path) == "savedmodel"
    except ModelReadError:
        return False


def static_findings(description: ModelDescription, settings: Settings) -> list[Finding]:
    """Run every enabled static rule over every layer, in rule order then layer order."""
    findings = []
    for rule_id, rule in RULES.items():
        if rule.NEEDS != "static" or not settings.enabled(rule_id):
            continue
        options = settings.rules[rule_id].options
        for layer in description.layers:
            findings += [
                stamp(rule_id, problem, settings) for problem in rule.check(layer, options)
            ]
    return findings


def probe_findings(result: ProbeResult, settings: Settings) -> list[Finding]:
    """Run every enabled probe rule over one model's probe result, in rule order."""
    findings = []
    for rule_id, rule in RULES.items():
        if rule.NEEDS != "probe" or not settings.enabled(rule_id):
            continue
        options = settings.rules[rule_id].options
        findings += [stamp(rule_id, problem, settings) for problem in rule.check(result, options)]
    return findings


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
