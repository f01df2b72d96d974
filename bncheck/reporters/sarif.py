"""SARIF 2.1.0, the format of GitHub code scanning and other result viewers.

Each finding is a result located in the model file, with the BN layer as a logical location.
Every registered rule is described in the driver, with its documentation as help text. Inputs
that could not be read are tool execution notifications, and make the invocation unsuccessful.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

from bncheck import __version__
from bncheck.findings import ExitCode, Finding, ModelResult, Report, Severity
from bncheck.reporters.json_format import strict
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.rules import RULES, Rule
from bncheck.rules.docs import default_note, rule_doc

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
LEVELS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}
#: Key of the fingerprint that identifies a finding across runs: rule, model file, layer.
FINGERPRINT = "bncheckFinding/v1"


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    rule_index = {rule_id: index for index, rule_id in enumerate(RULES)}
    run = {
        "tool": {
            "driver": {
                "name": "bncheck",
                "version": __version__,
                "semanticVersion": __version__,
                "rules": [_rule(rule) for rule in RULES.values()],
            }
        },
        "invocations": [
            {
                "executionSuccessful": report.exit_code != ExitCode.UNREADABLE,
                "exitCode": int(report.exit_code),
                "toolExecutionNotifications": [
                    _read_error(model) for model in report.models if model.error is not None
                ],
            }
        ],
        "results": [
            _result(model, finding, rule_index[finding.rule])
            for model in report.models
            for finding in model.findings
        ],
    }
    sarif = {"$schema": SCHEMA_URI, "version": "2.1.0", "runs": [run]}
    return json.dumps(strict(sarif), indent=2, allow_nan=False) + "\n"


def _rule(rule: Rule) -> dict[str, Any]:
    doc = rule_doc(rule)
    return {
        "id": rule.ID,
        "name": rule.NAME,
        "shortDescription": {"text": doc.summary},
        "fullDescription": {"text": _flow(doc.description or doc.summary)},
        "help": {"text": doc.text, "markdown": _help_markdown(rule)},
        "defaultConfiguration": {"level": LEVELS[rule.DEFAULT_SEVERITY]},
        "properties": {"needs": rule.NEEDS},
    }


def _help_markdown(rule: Rule) -> str:
    doc = rule_doc(rule)
    parts = [_code_spans(doc.summary)]
    if doc.description:
        parts.append(_code_spans(doc.description))
    for label, body in doc.sections.items():
        if label == "Options":
            body = "\n".join(
                f"- `{name}`{default_note(rule, name)}: {text}"
                for name, text in doc.options.items()
            )
            parts.append(f"**{label}:**\n\n{_code_spans(body)}")
        else:
            parts.append(f"**{label}:** {_code_spans(body)}")
    return "\n\n".join(parts)


def _flow(text: str) -> str:
    """Hard-wrapped paragraphs as single lines: viewers wrap text themselves."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in text.split("\n\n"))


def _code_spans(text: str) -> str:
    """reStructuredText literals (````x````) as Markdown code spans (```x```)."""
    return re.sub(r"``(.+?)``", r"`\1`", text, flags=re.DOTALL)


def _result(model: ModelResult, finding: Finding, rule_index: int) -> dict[str, Any]:
    location: dict[str, Any] = {
        "physicalLocation": {
            "artifactLocation": {"uri": artifact_uri(model.path)},
            # A model file has no lines, but code scanning shows only results with a region.
            "region": {"startLine": 1},
        }
    }
    if finding.layer is not None:
        location["logicalLocations"] = [
            {
                "name": finding.layer.rsplit("/", 1)[-1],
                "fullyQualifiedName": finding.layer,
                "kind": "object",
            }
        ]
    where = f"{finding.layer}: " if finding.layer else ""
    identity = "\0".join([finding.rule, model.path, finding.layer or ""])
    return {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": LEVELS[finding.severity],
        "message": {"text": f"{where}{finding.message}"},
        "locations": [location],
        "partialFingerprints": {FINGERPRINT: hashlib.sha256(identity.encode()).hexdigest()},
        "properties": {"name": finding.name, "details": dict(finding.details)},
    }


def _read_error(model: ModelResult) -> dict[str, Any]:
    return {
        "level": "error",
        "message": {"text": f"{model.path}: {model.error}"},
        "locations": [
            {"physicalLocation": {"artifactLocation": {"uri": artifact_uri(model.path)}}}
        ],
    }


def artifact_uri(path: str) -> str:
    """A relative path stays relative (code scanning resolves it against the repository root);
    an absolute one becomes a ``file:`` URI."""
    if os.path.isabs(path):
        return Path(path).as_uri()
    return quote(PurePath(os.path.normpath(path)).as_posix())
