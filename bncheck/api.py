"""The Python API: the engine behind ``bncheck inspect``, called from Python.

Rules, settings and report objects are those of the command line; this module only maps
keyword arguments onto them. Its heavy imports (h5py for reading, Keras for live models) happen
inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bncheck.findings import Report
    from bncheck.model import ModelDescription
    from bncheck.settings import Settings

#: A file or folder path, as a string or a path object.
PathLike = str | os.PathLike[str]
#: Rules by ID or name: one string (comma-separated like ``--select``) or an iterable of them.
RuleKeys = str | Iterable[str] | None


def inspect(
    path_or_paths: PathLike | Iterable[PathLike],
    *,
    select: RuleKeys = None,
    ignore: RuleKeys = None,
    config: PathLike | None = None,
    read_timeout: float = 30.0,
) -> Report:
    """Inspect saved models, checkpoints, SavedModels and folders of models without running
    them, like ``bncheck inspect``.

    Args:
        path_or_paths: one path or several. A folder is searched recursively for models.
        select: run only these rules (IDs such as ``"BN001"`` or names such as
            ``"untouched-moving-stats"``), whatever the configuration selects; like ``--select``.
        ignore: turn these rules off as well; like ``--ignore``.
        config: a ``bncheck.toml`` or ``pyproject.toml`` to read the settings from. Without it,
            the configuration is found from the working directory upward, as the command line
            finds it.
        read_timeout: seconds one file's reading may take (each is read in a process of its
            own); like ``--read-timeout``.

    Returns:
        The ``Report`` the command line renders. An input that cannot be read is a result with
        ``error`` set (``report.exit_code`` is then ``ExitCode.UNREADABLE``), never an exception.

    Raises:
        UsageError: an unknown rule, a configuration file that is missing or invalid, or a
            ``read_timeout`` that is not a finite number of seconds above 0.
    """
    import math
    from dataclasses import replace

    from bncheck.engine import inspect_paths
    from bncheck.errors import UsageError
    from bncheck.isolation import DEFAULT_LIMITS

    if isinstance(path_or_paths, (str, os.PathLike)):
        paths = [os.fspath(path_or_paths)]
    else:
        paths = [os.fspath(path) for path in path_or_paths]
    if not paths:
        raise UsageError("inspect needs at least one path")
    number = isinstance(read_timeout, (int, float)) and not isinstance(read_timeout, bool)
    if not (number and math.isfinite(read_timeout)):
        raise UsageError(f"read_timeout={read_timeout!r}: give a finite number of seconds")
    if read_timeout <= 0:
        raise UsageError(f"read_timeout={read_timeout!r}: give a number of seconds above 0")
    limits = replace(DEFAULT_LIMITS, seconds=float(read_timeout))
    return inspect_paths(paths, resolve(select, ignore, config), limits=limits)


def check_model(
    model: Any,
    *,
    select: RuleKeys = None,
    ignore: RuleKeys = None,
    config: PathLike | None = None,
) -> Report:
    """Judge a live Keras 3 model in memory, without saving it: the static rules of
    ``bncheck inspect`` on its current variables and configuration.

    Works on every Keras 3 backend. Every BatchNormalization layer is found, inside nested
    models and wrappers too; the report names each by its path from the outermost model, as the
    report on the model's saved file would.

    Args:
        model: a ``keras.Model`` (or any Keras 3 layer).
        select: run only these rules; see ``inspect``.
        ignore: turn these rules off as well; see ``inspect``.
        config: the configuration file; see ``inspect``.

    Returns:
        A ``Report`` with one result, whose ``path`` is the model's name and ``format`` is
        ``"live"``.

    Raises:
        TypeError: ``model`` is not a Keras 3 layer or model.
        UsageError: an unknown rule, or a configuration file that is missing or invalid.
    """
    from bncheck.live import describe

    return judged_report(describe(model), resolve(select, ignore, config))


def judged_report(description: ModelDescription, settings: Settings) -> Report:
    """The report on one model's description, judged by the static rules."""
    from bncheck.engine import judged
    from bncheck.findings import Report

    result = judged(description.path, description, settings)
    return Report(models=(result,), fail_on=settings.fail_on)


def render(report: Report, format: str = "table") -> str:
    """A report as text, in any format of ``bncheck inspect --format``: ``table``, ``json``,
    ``markdown``, ``sarif``, ``junit`` or ``github``. The JSON is the documented contract.

    Raises:
        UsageError: an unknown format.
    """
    from bncheck.errors import UsageError
    from bncheck.reporters import REPORTERS
    from bncheck.reporters.options import PLAIN

    if format not in REPORTERS:
        raise UsageError(f"unknown format {format!r} (choose from {', '.join(sorted(REPORTERS))})")
    return REPORTERS[format](report, PLAIN)


def resolve(select: RuleKeys, ignore: RuleKeys, config: PathLike | None) -> Settings:
    """Settings as the command line resolves them: rule defaults, then the configuration file
    (``config``, or the one found from the working directory upward), then select and ignore."""
    from bncheck.config import ConfigOptions, resolve_settings

    options = ConfigOptions(
        config=None if config is None else os.fspath(config),
        select=rule_keys(select),
        ignore=rule_keys(ignore),
    )
    return resolve_settings(options, Path.cwd())


def rule_keys(keys: RuleKeys) -> tuple[str, ...]:
    """Rule keys from one comma-separated string (as ``--select BN001,BN002`` takes them) or an
    iterable of keys."""
    if keys is None:
        return ()
    if isinstance(keys, str):
        keys = keys.split(",")
    return tuple(key.strip() for key in keys if key.strip())
