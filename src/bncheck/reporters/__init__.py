"""Reporters: pure functions from a ``Report`` to text, one module per format."""

from __future__ import annotations

from collections.abc import Callable

from bncheck.findings import Report
from bncheck.reporters import json_format, table

REPORTERS: dict[str, Callable[[Report], str]] = {
    "table": table.render,
    "json": json_format.render,
}
