"""How a report is rendered, decided by the command line and passed to every reporter.

Reporters stay pure functions of the report and these options: they never look at the terminal
or the environment themselves.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderOptions:
    """Presentation choices that are not part of the report."""

    color: bool = False
    """Colour severities and the verdict with ANSI escapes (formats for people only)."""


PLAIN = RenderOptions()
"""No colour: files, pipes, and ``NO_COLOR``."""
