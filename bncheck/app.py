"""What each command does, given its options as plain objects: read, judge, report, exit code.

The command line (``cli.py``) only turns flags into these option objects.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bncheck import isolation
from bncheck.config import ConfigOptions, resolve_settings
from bncheck.engine import check_checkpoint, inspect_path, inspect_paths
from bncheck.errors import ModelReadError, UsageError
from bncheck.extras import require
from bncheck.findings import ExitCode, Report
from bncheck.probe.options import ProbeOptions
from bncheck.progress import Progress
from bncheck.records import record
from bncheck.reporters import REPORTERS
from bncheck.reporters.options import PLAIN as PLAIN_RENDER
from bncheck.reporters.options import RenderOptions
from bncheck.rules import RULES
from bncheck.settings import resolve_rule
from bncheck.text import shown

if TYPE_CHECKING:
    from bncheck.recalibrate.options import RecalibrateOptions


@record
class OutputOptions:
    """Where and how to write a report."""

    format: str
    output: str | None
    """File to write the report to; ``None`` for standard output."""
    render: RenderOptions = RenderOptions()


@record
class InspectOptions:
    paths: tuple[str, ...]
    config: ConfigOptions
    output: OutputOptions
    jobs: int = 1
    """How many models to read at once, each in its own process."""
    probe: ProbeOptions | None = None
    """How to run the models; ``None`` for static inspection only."""
    read_timeout: float = isolation.DEFAULT_LIMITS.seconds
    """Seconds one file's reading may take."""


@record
class PlotOptions:
    model: str
    output: str
    """Image file to write; its suffix (.png or .svg) picks the format."""
    config: ConfigOptions
    probe: ProbeOptions | None = None
    """How to run the model for the probe panels; ``None`` for the static picture only."""


PLOT_SUFFIXES = (".png", ".svg")


@record
class CheckpointOptions:
    path: str
    model: str | None
    """The model whose BatchNorm layers the checkpoint must restore (``--model``)."""
    config: ConfigOptions
    output: OutputOptions
    read_timeout: float = isolation.DEFAULT_LIMITS.seconds
    """Seconds one file's reading may take."""


def run_inspect(options: InspectOptions) -> int:
    settings = resolve_settings(options.config, Path.cwd())
    progress = Progress()
    try:
        report = inspect_paths(
            options.paths,
            settings,
            options.jobs,
            options.probe,
            progress.step,
            replace(isolation.DEFAULT_LIMITS, seconds=options.read_timeout),
        )
    finally:
        progress.done()
    return finish(report, options.output)


def run_checkpoint(options: CheckpointOptions) -> int:
    settings = resolve_settings(options.config, Path.cwd())
    limits = replace(isolation.DEFAULT_LIMITS, seconds=options.read_timeout)
    return finish(check_checkpoint(options.path, options.model, settings, limits), options.output)


def finish(report: Report, output: OutputOptions) -> int:
    """Name each unreadable input on stderr, write the report, return the exit code."""
    for model in report.models:
        if model.error is not None:
            click.echo(f"bncheck: error: {shown(model.path)}: {shown(model.error)}", err=True)
    write_report(REPORTERS[output.format](report, output.render), output)
    return int(report.exit_code)


def run_rules() -> int:
    from tabulate import tabulate

    from bncheck.rules.docs import WIDTH, plain, rule_doc

    rows = [
        [rule.ID, rule.NAME, str(rule.DEFAULT_SEVERITY), rule.NEEDS, plain(rule_doc(rule).summary)]
        for rule in RULES.values()
    ]
    headers = ["rule", "name", "default", "needs", "summary"]
    # The summary takes what the other columns and their gap leave of the width.
    others = tabulate([row[:4] for row in rows], headers=headers[:4], tablefmt="simple")
    fixed = max(len(line) for line in others.splitlines()) + 2
    table = tabulate(
        rows,
        headers=headers,
        tablefmt="simple",
        disable_numparse=True,
        maxcolwidths=[None, None, None, None, WIDTH - fixed],
    )
    click.echo(table)
    return ExitCode.OK


def run_explain(rule_key: str, framework: str = "keras") -> int:
    from bncheck.model import VOCABULARIES
    from bncheck.rules.docs import explain as explain_rule

    click.echo(explain_rule(RULES[resolve_rule(rule_key)], VOCABULARIES[framework]), nl=False)
    return ExitCode.OK


def run_plot(options: PlotOptions) -> int:
    if not options.output.lower().endswith(PLOT_SUFFIXES):
        raise UsageError(f"--output must end in {' or '.join(PLOT_SUFFIXES)}: {options.output}")
    require("plot", "bncheck plot")
    settings = resolve_settings(options.config, Path.cwd())
    progress = Progress()
    try:
        result = inspect_path(options.model, settings, options.probe, progress.step)
    finally:
        progress.done()
    if result.error is not None:
        click.echo(f"bncheck: error: {shown(result.path)}: {shown(result.error)}", err=True)
        return ExitCode.UNREADABLE
    from bncheck.plot import plot_model, probe_overlay  # matplotlib costs a second to import

    staleness = settings.rules["BN014"].options
    overlay = probe_overlay(result, staleness["max_mean_shift"], staleness["max_variance_factor"])
    try:
        plot_model(result, options.output, overlay)
    except OSError as exc:
        raise UsageError(f"cannot write --output {options.output}: {exc.strerror or exc}") from None
    click.echo(f"wrote {shown(options.output)}")
    return ExitCode.OK


def write_report(text: str, output: OutputOptions) -> None:
    if output.output is None:
        if sys.stdout is None:  # the command started with it closed (``>&-``)
            raise UsageError("cannot write the report: standard output is closed; give --output")
        try:
            click.echo(text, nl=False)
            sys.stdout.flush()
        except BrokenPipeError:
            raise  # a reader that stopped reading (``| head``): the interpreter's own way out
        except OSError as exc:
            reason = exc.strerror or exc
            raise UsageError(f"cannot write the report to standard output: {reason}") from None
        return
    try:
        with open(output.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write --output {output.output}: {exc.strerror or exc}") from None


def run_recalibrate(
    options: RecalibrateOptions, config: ConfigOptions, render: RenderOptions = PLAIN_RENDER
) -> int:
    from bncheck.recalibrate.command import recalibrate
    from bncheck.reporters import recalibration

    options = replace(options, settings=resolve_settings(config, Path.cwd()))
    progress = Progress()
    try:
        result = recalibrate(options, progress)
    except ModelReadError as exc:
        click.echo(f"bncheck: error: {shown(options.model)}: {shown(str(exc))}", err=True)
        return int(ExitCode.UNREADABLE)
    finally:
        progress.done()
    click.echo(recalibration.render(result, render), nl=False)
    # The written model's report, as inspect's: an input it could not read is named on stderr.
    for model in () if result.report is None else result.report.models:
        if model.error is not None:
            click.echo(f"bncheck: error: {shown(model.path)}: {shown(model.error)}", err=True)
    return int(result.exit_code)
