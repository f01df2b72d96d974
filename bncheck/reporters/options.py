"""How a report is rendered, decided by the command line and passed to every reporter.

Reporters stay pure functions of the report and these options: they never look at the terminal
or the environment themselves.
"""

from __future__ import annotations

from bncheck.records import record

DEFAULT_WIDTH = 100
"""The columns of text written anywhere but a terminal: files, pipes, CI logs."""


@record
class RenderOptions:
    """Presentation choices that are not part of the report."""

    color: bool = False
    """Colour severities and the verdict with ANSI escapes (formats for people only)."""

    width: int = DEFAULT_WIDTH
    """Columns the text report wraps its findings to: the terminal's width on a terminal."""


PLAIN = RenderOptions()
"""No colour, ``DEFAULT_WIDTH`` columns: files, pipes, and ``NO_COLOR``."""
