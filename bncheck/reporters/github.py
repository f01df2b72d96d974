"""GitHub Actions workflow commands: one annotation per finding, per unreadable input and per
model whose probe failed.

Annotations appear on the workflow run and the pull request; the verdict line closes the log.
"""

from __future__ import annotations

from bncheck.findings import Report, Severity
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.reporters.table import verdict
from bncheck.text import shown

COMMANDS = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "notice"}


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    lines = []
    for model in report.models:
        if model.error is not None:
            title = "probe failed" if model.probe_failed else "unreadable model"
            lines.append(_command("error", model.path, title, model.error))
        for finding in model.findings:
            where = f"{finding.layer}: " if finding.layer else ""
            lines.append(
                _command(
                    COMMANDS[finding.severity],
                    model.path,
                    f"{finding.rule} {finding.name}",
                    f"{where}{finding.message}",
                )
            )
    lines.append(verdict(report))
    return "\n".join(lines) + "\n"


def _command(command: str, path: str, title: str, message: str) -> str:
    return f"::{command} file={_property(path)},title={_property(title)}::{_data(message)}"


def _data(text: str) -> str:
    """Escape a command's message the way the Actions runner unescapes it, after showing the
    control characters of names from a file as escapes (``shown``): an annotation is one line
    of text, not a terminal."""
    return shown(text).replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _property(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")
