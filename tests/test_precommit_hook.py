"""The repository is a pre-commit hook: its manifest runs ``bncheck inspect`` on model files."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from bncheck.formats import model_suffixes, precommit_pattern
from tests.conftest import FIXTURES, REPO, CliResult, fixture_manifest


def hook() -> dict[str, Any]:
    [entry] = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(entry, dict)
    return entry


def test_manifest_declares_the_hook() -> None:
    entry = hook()
    assert {"id", "name", "entry", "language"} <= set(entry)
    assert entry["id"] == "bncheck"
    assert entry["language"] == "python"
    assert entry["entry"].split() == ["bncheck", "inspect"]


def test_hook_pattern_is_the_one_the_format_registry_derives() -> None:
    assert hook()["files"] == precommit_pattern()


def test_hook_selects_model_files_only() -> None:
    files = re.compile(hook()["files"])
    model_files = [name for name in fixture_manifest() if name.endswith(model_suffixes())]
    assert model_files
    assert all(files.search(f"models/{name}") for name in model_files)
    assert files.search("exports/MODEL.H5")
    tracked = [p.relative_to(REPO).as_posix() for p in REPO.rglob("*") if p.is_file()]
    assert not [
        p for p in tracked if p.endswith((".py", ".json", ".toml", ".md")) and files.search(p)
    ]


def test_hook_command_gates_on_the_files_pre_commit_passes(
    run_cli: Callable[..., CliResult],
) -> None:
    command = hook()["entry"].split()[1:]
    healthy = FIXTURES / "keras3/healthy_cnn.keras"
    untouched = FIXTURES / "keras3/untouched_stats.keras"
    assert run_cli(*command, healthy).code == 0
    result = run_cli(*command, "--fail-on", "warning", healthy, untouched)
    assert result.code == 1
    assert "BN001 untouched-moving-stats" in result.out


def test_hook_installs_the_core_only() -> None:
    """pre-commit installs the package with its core requirements (no TensorFlow, see
    test_core_install) plus any additional_dependencies: there must be none."""
    assert not hook().get("additional_dependencies")
