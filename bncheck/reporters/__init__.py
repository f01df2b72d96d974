"""Reporters: pure functions from a ``Report`` (and render options) to text, one module per
format."""

from __future__ import annotations

from collections.abc import Callable

from bncheck.findings import Report
from bncheck.reporters import github, json_format, junit, markdown, sarif, table
from bncheck.reporters.options import RenderOptions

Reporter = Callable[[Report, RenderOptions], str]

REPORTERS: dict[str, Reporter] = {
    "table": table.render,
    "json": json_format.render,
    "sarif": sarif.render,
    "junit": junit.render,
    "markdown": markdown.render,
    "github": github.render,
}
