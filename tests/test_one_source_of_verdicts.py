"""Verdicts come from the rules and the engine only: what the configuration does to a finding
(its severity, ignoring the rule, ignoring it on one layer), every reporter and the recalibration
report say alike. Built by hand, so no model runs here."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from bncheck.engine import probe_findings
from bncheck.findings import ModelResult, Report
from bncheck.model import ModelDescription
from bncheck.recalibrate.results import LayerChange, Recalibration, Verification
from bncheck.reporters import REPORTERS, recalibration
from bncheck.reporters.options import PLAIN
from bncheck.settings import Settings
from tests.rules.conftest import measured_layer, measured_output, population, probe_result

#: Off by a factor of 2.5: stale, but not severely (the configured severity stands).
STALE = {
    "moving_mean": np.zeros(4),
    "moving_variance": np.ones(4),
    "population": population([0.0] * 4, [0.4] * 4),
}


def report(settings: Settings) -> Report:
    probe = probe_result(
        (measured_layer(path="m/bn1", **STALE), measured_layer(path="m/bn2", **STALE)),
        (measured_output(reestimated_top1_agreement=0.4),),
    )
    findings = tuple(probe_findings(probe, settings))
    model = ModelResult("m.keras", "keras", ModelDescription("m.keras", "keras", ()), findings)
    return Report(models=(model,), fail_on=settings.fail_on)


def said(report: Report) -> dict[str, str]:
    """Each reporter's text, and the recalibration report's around the same findings."""
    texts = {name: render(report, PLAIN) for name, render in REPORTERS.items()}
    check = Verification("x.npz", True, 100, None, 0.6, 1.0)
    result = Recalibration(
        "m.keras", "o.keras", "x.npz", 1, 32, (LayerChange("m/bn1", "recalibrated"),), check,
        None, report.fail_on,
    ).written("o.keras", report.models[0])  # fmt: skip
    texts["recalibrate"] = recalibration.render(result)
    return texts


def sarif_levels(text: str) -> dict[str, str]:
    results = json.loads(text)["runs"][0]["results"]
    return {result["ruleId"]: result["level"] for result in results}


CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "BN014 as information": {"severities": {"BN014": "info"}},
    "BN014 ignored": {"ignore": ["BN014"]},
    "BN015 ignored": {"ignore": ["BN015"]},
    "BN014 ignored on m/bn1": {"layer_ignores": {"m/bn1": ["BN014"]}},
}


@pytest.mark.parametrize("name", CONFIGURATIONS)
def test_every_reporter_says_what_the_engine_decided(name: str) -> None:
    settings = Settings().with_overrides(**CONFIGURATIONS[name])
    decided = report(settings)
    by_rule = {finding.rule: finding for finding in decided.findings}
    texts = said(decided)
    for rule in ("BN014", "BN015"):
        present = rule in by_rule
        for reporter, text in texts.items():
            # SARIF describes every rule; its results are what it reports.
            shown = rule in sarif_levels(text) if reporter == "sarif" else rule in text
            assert shown == present, (name, reporter, rule)
    if "BN014" in by_rule:
        severity = str(by_rule["BN014"].severity)
        assert f"{severity:<8} BN014" in texts["table"]
        assert f"{severity:<8} BN014" in texts["recalibrate"]
        found = json.loads(texts["json"])["models"][0]["findings"]
        assert {f["severity"] for f in found if f["rule"] == "BN014"} == {severity}
        level = {"error": "error", "warning": "warning", "info": "note"}[severity]
        assert sarif_levels(texts["sarif"])["BN014"] == level
        annotation = {"error": "::error", "warning": "::warning", "info": "::notice"}[severity]
        assert any(
            line.startswith(annotation) and "BN014" in line for line in texts["github"].splitlines()
        )
    # The verdict line and the exit code follow the same findings.
    fails = decided.exit_code == 1
    assert texts["table"].rstrip().splitlines()[-1].startswith("FAIL" if fails else "OK")


def test_the_configurations_do_change_the_findings() -> None:
    """The test above would pass vacuously if the configurations changed nothing."""
    decided = {
        name: sorted((f.rule, f.layer, str(f.severity)) for f in report(Settings().with_overrides(
            **overrides
        )).findings)
        for name, overrides in CONFIGURATIONS.items()
    }  # fmt: skip
    assert len({tuple(found) for found in decided.values()}) == len(CONFIGURATIONS)
    assert ("BN014", "m/bn1", "warning") in decided["defaults"]
    assert ("BN014", "m/bn1", "info") in decided["BN014 as information"]
    assert [f[:2] for f in decided["BN014 ignored on m/bn1"] if f[0] == "BN014"] == [
        ("BN014", "m/bn2")
    ]
