"""Configuration files: ``[tool.bncheck]`` in pyproject.toml, or a bncheck.toml.

The file is found from the working directory upward (in each directory ``bncheck.toml`` first,
then a ``pyproject.toml`` that has a ``[tool.bncheck]`` table), or named with ``--config``.
Settings come from the rules' defaults, then the file, then the command-line flags. Every mistake
in the file is a ``UsageError`` naming the file.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import field, replace
from pathlib import Path
from typing import Any

from bncheck.errors import UsageError
from bncheck.findings import FailOn
from bncheck.records import record
from bncheck.settings import Settings

BNCHECK_TOML = "bncheck.toml"
PYPROJECT_TOML = "pyproject.toml"

KEYS = ("fail-on", "select", "ignore", "rules", "per-layer-ignores")
"""Every key a configuration may set."""


@record
class ConfigOptions:
    """The command-line flags that choose the configuration and apply on top of it."""

    config: str | None = None
    """``--config``: the file to use instead of searching for one."""
    select: tuple[str, ...] = ()
    """``--select``: when given, exactly these rules run, whatever the file selects or ignores."""
    ignore: tuple[str, ...] = ()
    """``--ignore``: these rules are turned off as well."""
    fail_on: FailOn | None = None
    """``--fail-on``: replaces the file's ``fail-on`` when given."""
    rule_options: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    """Rule options set by flags (``--fail-under`` sets BN023's bounds), over the file's."""


def resolve_settings(options: ConfigOptions, cwd: Path) -> Settings:
    """Rule defaults, then the configuration file, then the flags."""
    path = Path(options.config) if options.config is not None else find_config(cwd)
    settings = settings_from_file(path) if path is not None else Settings()
    settings = settings.with_overrides(
        select=options.select, ignore=options.ignore, options=options.rule_options
    )
    if options.fail_on is not None:
        settings = replace(settings, fail_on=options.fail_on)
    return settings


def settings_from_file(path: Path) -> Settings:
    table = load_table(path)
    source = str(path)
    select, ignore = _names(table, "select", source), _names(table, "ignore", source)
    severities, rule_options = _rule_tables(table, source)
    layer_ignores = _layer_ignores(table, source)
    fail_on = _fail_on(table, source)
    try:
        settings = Settings().with_overrides(
            select=select,
            ignore=ignore,
            severities=severities,
            options=rule_options,
            layer_ignores=layer_ignores,
        )
    except UsageError as exc:
        raise UsageError(f"{source}: {exc}") from None
    return replace(settings, fail_on=fail_on)


def find_config(start: Path) -> Path | None:
    """The nearest configuration file from ``start`` upward, or ``None``."""
    for directory in (start, *start.parents):
        candidate = directory / BNCHECK_TOML
        if candidate.is_file():
            return candidate
        pyproject = directory / PYPROJECT_TOML
        if pyproject.is_file() and _tool_table(_parse(pyproject)) is not None:
            return pyproject
    return None


def load_table(path: Path) -> Mapping[str, Any]:
    """The bncheck settings in a file: ``[tool.bncheck]`` of a pyproject.toml, the whole file
    otherwise. Unknown keys are an error."""
    document = _parse(path)
    if path.name == PYPROJECT_TOML:
        table, prefix = _tool_table(document) or {}, "tool.bncheck."
    else:
        table, prefix = document, ""
    if not isinstance(table, dict):
        raise UsageError(f"{path}: tool.bncheck must be a table, not {table!r}")
    for key in table:
        if key not in KEYS:
            raise UsageError(f"{path}: unknown key '{prefix}{key}' (known keys: {', '.join(KEYS)})")
    return table


def _tool_table(pyproject: Mapping[str, Any]) -> Any:
    """``[tool.bncheck]`` of a parsed pyproject.toml; ``None`` when there is none."""
    tool = pyproject.get("tool")
    return tool.get("bncheck") if isinstance(tool, dict) else None


def _parse(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):  # imported here: most runs find no configuration file
        import tomllib
    else:
        import tomli as tomllib

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise UsageError(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML ({exc})") from None


def _fail_on(table: Mapping[str, Any], source: str) -> FailOn:
    value = table.get("fail-on", FailOn.ERROR.value)
    try:
        return FailOn(value)
    except ValueError:
        choices = ", ".join(level.value for level in FailOn)
        raise UsageError(f"{source}: fail-on must be one of {choices}, not {value!r}") from None


def _names(table: Mapping[str, Any], key: str, source: str) -> tuple[str, ...]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UsageError(f"{source}: {key} must be a list of rule IDs or names, not {value!r}")
    return tuple(value)


def _rule_tables(
    table: Mapping[str, Any], source: str
) -> tuple[dict[str, str], dict[str, dict[str, object]]]:
    """``[rules.BN006]`` tables: a ``severity`` and the rule's options."""
    rules = table.get("rules", {})
    if not isinstance(rules, dict):
        raise UsageError(f"{source}: rules must be a table of rule tables, not {rules!r}")
    severities: dict[str, str] = {}
    options: dict[str, dict[str, object]] = {}
    for rule, values in rules.items():
        if not isinstance(values, dict):
            raise UsageError(f"{source}: rules.{rule} must be a table, not {values!r}")
        values = dict(values)
        if "severity" in values:
            severities[rule] = str(values.pop("severity"))
        options[rule] = values
    return severities, options


def _layer_ignores(table: Mapping[str, Any], source: str) -> dict[str, list[str]]:
    """``[per-layer-ignores]``: a layer glob mapped to the rules ignored there."""
    ignores = table.get("per-layer-ignores", {})
    if not isinstance(ignores, dict) or not all(
        isinstance(rules, list) and all(isinstance(rule, str) for rule in rules)
        for rules in ignores.values()
    ):
        raise UsageError(
            f"{source}: per-layer-ignores must map layer globs to lists of rules, not {ignores!r}"
        )
    return ignores
