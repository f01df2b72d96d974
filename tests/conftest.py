from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bncheck.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``bncheck ARGS...`` in-process through the real entry point."""

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(int(exit_info.value.code or 0), captured.out, captured.err)

    return run


def fixture_manifest() -> dict[str, dict[str, Any]]:
    """Every fixture with its declared expectations, from the generators' manifests."""
    entries: dict[str, dict[str, Any]] = {}
    for manifest in sorted(FIXTURES.glob("manifest-*.json")):
        entries.update(json.loads(manifest.read_text()))
    return entries
