"""The committed JSON Schema of ``[tool.bncheck]`` (``bncheck/schemas/config.schema.json``):
generated from the rules, accepting exactly the configurations bncheck accepts, and every example
of ``docs/configuration.md``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bncheck.config import KEYS, settings_from_file
from bncheck.errors import UsageError
from tests.conftest import REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

CASES = REPO / "tests" / "acceptance" / "config_cases"


def validator() -> jsonschema.Draft202012Validator:
    text = resources.files("bncheck").joinpath("schemas/config.schema.json").read_text()
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def bncheck_table(path: Path, document: dict[str, Any]) -> Any:
    """What bncheck reads of a file: ``[tool.bncheck]`` of a pyproject.toml, else all of it."""
    if path.name == "pyproject.toml":
        tool = document.get("tool", {})
        return tool.get("bncheck", {}) if isinstance(tool, dict) else {}
    return document


def accepted_by_bncheck(path: Path) -> bool:
    try:
        settings_from_file(path)
    except UsageError:
        return False
    return True


def test_the_schema_is_generated_from_the_rules_and_names_every_key() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "docs/gen_config_schema.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert list(validator().schema["properties"]) == list(KEYS)


def test_the_schema_accepts_exactly_the_configurations_bncheck_accepts() -> None:
    """Every configuration of the acceptance cases, the broken ones included: the schema and
    bncheck agree on each (a file that is not TOML has nothing for a schema to judge)."""
    check = validator()
    verdicts = {}
    for path in sorted(CASES.rglob("*.toml")):
        try:
            document = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            continue
        valid = check.is_valid(bncheck_table(path, document))
        assert valid == accepted_by_bncheck(path), path.relative_to(CASES)
        verdicts[path] = valid
    assert sum(verdicts.values()) >= 10 and list(verdicts.values()).count(False) >= 10


@pytest.mark.parametrize(
    "text",
    [
        'fail-on = "warning"\nignore = ["frozen-layer", "bn009"]',
        '[rules.BN006]\nseverity = "Error"\nmax_gain = 1e4',
        "[rules.dead-channels]\nmax_variance = 1",
        '[rules.BN023]\nmax_mean_squared_error = inf\n[per-layer-ignores]\n"a/*" = ["BN007"]',
    ],
)
def test_valid_configurations_pass_both(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bncheck.toml"
    path.write_text(text)
    assert validator().is_valid(tomllib.loads(text)) and accepted_by_bncheck(path)


@pytest.mark.parametrize(
    "text",
    [
        'select = ["BN000"]',  # no such rule
        'ignore = ["Frozen-Layer"]',  # names are exact, unlike IDs
        "[rules.BN006]\nmax_gain = true",  # a flag is no number
        "[rules.BN006]\nmin_momentum = 0.9",  # another rule's option
        '[rules.BN001]\nseverity = "off"',
        'fail-on = "Error"',
        '[per-layer-ignores]\n"*" = ["BN001", 7]',
    ],
)
def test_invalid_configurations_fail_both(text: str, tmp_path: Path) -> None:
    path = tmp_path / "bncheck.toml"
    path.write_text(text)
    assert not validator().is_valid(tomllib.loads(text))
    assert not accepted_by_bncheck(path)


def test_every_example_in_the_configuration_docs_is_valid(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    examples = re.findall(r"```toml\n(.*?)```", docs, re.S)
    assert examples
    check = validator()
    for example in examples:
        document = tomllib.loads(example)
        name = "pyproject.toml" if "tool" in document else "bncheck.toml"
        path = tmp_path / name
        path.write_text(example)
        table = bncheck_table(path, document)
        assert table, example
        errors = [error.message for error in check.iter_errors(table)]
        assert errors == [], example
        assert accepted_by_bncheck(path), example
