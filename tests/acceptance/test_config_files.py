"""Configuration files, case by case: each folder under ``config_cases/`` holds the files of one
project (``bncheck.toml``, ``pyproject.toml``, sub-folders) and an ``expect.json``: the arguments
to run with (``{fixtures}`` is the fixtures folder, ``{case}`` the project folder), the folder to
run in (``cwd``, default the project folder), the exit code, and either the findings
(``[rule, layer, severity]``, from the JSON report) or the one line on stderr. Adding a case is
adding a folder."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, CliResult

CASES = Path(__file__).resolve().parent / "config_cases"


@pytest.mark.parametrize("case", sorted(p.name for p in CASES.iterdir() if p.is_dir()))
def test_config_case(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    run_cli: Callable[..., CliResult],
) -> None:
    project = tmp_path / case
    shutil.copytree(CASES / case, project)
    expect: dict[str, Any] = json.loads((project / "expect.json").read_text())

    def fill(text: str) -> str:
        return text.replace("{fixtures}", str(FIXTURES)).replace("{case}", str(project))

    args = [fill(arg) for arg in expect["args"]]
    if "findings" in expect:
        args += ["--format", "json"]
    monkeypatch.chdir(project / expect.get("cwd", "."))
    result = run_cli(*args)

    assert result.code == expect["exit"], result.err
    if "findings" in expect:
        found = [
            [f["rule"], f["layer"], f["severity"]]
            for model in result.json()["models"]
            for f in model["findings"]
        ]
        assert sorted(found) == sorted(expect["findings"])
        assert result.err == ""
    else:
        assert result.out == ""
        assert len(result.err.splitlines()) == 1, result.err
        if "stderr" in expect:
            assert result.err.rstrip("\n") == fill(expect["stderr"])
        else:
            assert result.err.startswith(fill(expect["stderr_prefix"]))
