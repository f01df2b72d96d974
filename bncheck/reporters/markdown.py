"""GitHub-flavoured Markdown for a pull-request comment: the verdict, a table of models, a table
of findings, and the inputs that could not be read."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence

from bncheck.findings import ModelResult, Report, Severity
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.reporters.table import verdict
from bncheck.text import shown

_SEVERITIES = (Severity.ERROR, Severity.WARNING, Severity.INFO)


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    status, _, summary = verdict(report).partition(": ")
    parts = [f"## bncheck: {status}", summary]
    parts.append(
        _table(
            ["status", "model", "format", "BN layers", "errors", "warnings", "infos"],
            [_model_row(model, report) for model in report.models],
            numeric=(3, 4, 5, 6),
        )
    )
    findings = [
        (model, finding)
        for model in report.models
        for finding in sorted(model.findings, key=lambda f: -f.severity)
    ]
    if findings:
        parts.append("### Findings")
        parts.append(
            _table(
                ["severity", "rule", "model", "layer", "message"],
                [
                    [
                        str(f.severity),
                        f"{f.rule} {_code(f.name)}",
                        _code(model.path),
                        _code(f.layer) if f.layer else "(model)",
                        _text(f.message),
                    ]
                    for model, f in findings
                ],
            )
        )
    for heading, listed in (
        ("Could not be read", [m for m in report.models if m.unreadable]),
        ("Could not be probed", [m for m in report.models if m.probe_failed]),
    ):
        if listed:
            parts.append(f"### {heading}")
            parts.append("\n".join(f"- {_code(m.path)}: {_text(m.error or '')}" for m in listed))
    return "\n\n".join(parts) + "\n"


def _model_row(model: ModelResult, report: Report) -> list[str]:
    if model.unreadable:
        return ["unreadable", _code(model.path), "", "", "", "", ""]
    layers = len(model.description.layers) if model.description else 0
    counts = [sum(1 for f in model.findings if f.severity == s) for s in _SEVERITIES]
    failing = any(report.fail_on.fails(f.severity) for f in model.findings)
    status = "probe failed" if model.probe_failed else "FAIL" if failing else "ok"
    return [
        status,
        _code(model.path),
        model.format or "",
        str(layers),
        *map(str, counts),
    ]


def _table(headers: list[str], rows: list[list[str]], numeric: Sequence[int] = ()) -> str:
    align = ["---:" if i in numeric else "---" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines)


def _cell(text: str) -> str:
    """A table cell is one line, and a pipe would end it (even inside a code span)."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    """A code span that survives backticks in the text; its content is shown literally."""
    text = shown(text)
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def _text(text: str) -> str:
    """Plain text: no HTML, links or images from names read out of a file. Escaping the
    brackets (and the backslash that could escape them back) leaves ``[x](url)`` and
    ``![x](url)`` as the characters they are; addresses GitHub would link by themselves
    (``https://...``, ``www.``) are shown defanged, ``https[:]//``, ``www[.]``."""
    text = html.escape(shown(text), quote=False)
    text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    text = _SCHEME.sub(r"\\[:\\]//", text)
    return _WWW.sub(lambda m: m.group(0)[:3] + r"\[.\]", text)


#: Where GitHub's extended autolinks start: a scheme's ``://`` and a leading ``www.``.
_SCHEME = re.compile(r"(?<=[A-Za-z0-9])://")
_WWW = re.compile(r"(?i)\bwww\.")
