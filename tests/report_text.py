"""The text report as its findings read before wrapping, for tests that look for a message."""

from __future__ import annotations

from bncheck.reporters.table import CONTINUATION


def unwrapped(text: str) -> str:
    """``text`` with each finding's wrapped lines joined back onto its first line by single
    spaces, the spaces they were broken at."""
    lines: list[str] = []
    for line in text.splitlines():
        if lines and line.startswith(CONTINUATION) and line.strip():
            lines[-1] += " " + line[len(CONTINUATION) :]
        else:
            lines.append(line)
    return "\n".join(lines) + ("\n" if text.endswith("\n") else "")
