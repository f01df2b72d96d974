"""Command line: parse options into plain objects, then hand them to one function per command."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click
from tabulate import tabulate

from bncheck import __version__
from bncheck.config import ConfigOptions, resolve_settings
from bncheck.engine import check_checkpoint, inspect_path, inspect_paths
from bncheck.errors import UsageError
from bncheck.findings import ExitCode, FailOn, Report
from bncheck.reporters import REPORTERS
from bncheck.reporters.options import RenderOptions
from bncheck.rules import RULES
from bncheck.rules.docs import explain as explain_rule
from bncheck.rules.docs import rule_doc
from bncheck.settings import resolve_rule


@dataclass(frozen=True)
class OutputOptions:
    """Where and how to write a report."""

    format: str
    output: str | None
    """File to write the report to; ``None`` for standard output."""
    render: RenderOptions = RenderOptions()


@dataclass(frozen=True)
class InspectOptions:
    paths: tuple[str, ...]
    config: ConfigOptions
    output: OutputOptions
    jobs: int = 1
    """How many models to read at once, each in its own process."""


@dataclass(frozen=True)
class PlotOptions:
    model: str
    output: str
    """Image file to write; its suffix (.png or .svg) picks the format."""
    config: ConfigOptions


PLOT_SUFFIXES = (".png", ".svg")


@dataclass(frozen=True)
class CheckpointOptions:
    path: str
    model: str | None
    """The model whose BatchNorm layers the checkpoint must restore (``--model``)."""
    config: ConfigOptions
    output: OutputOptions


def run_inspect(options: InspectOptions) -> int:
    settings = resolve_settings(options.config, Path.cwd())
    return finish(inspect_paths(options.paths, settings, jobs=options.jobs), options.output)


def run_checkpoint(options: CheckpointOptions) -> int:
    settings = resolve_settings(options.config, Path.cwd())
    return finish(check_checkpoint(options.path, options.model, settings), options.output)


def finish(report: Report, output: OutputOptions) -> int:
    """Name each unreadable input on stderr, write the report, return the exit code."""
    for model in report.models:
        if model.error is not None:
            click.echo(f"bncheck: error: {model.path}: {model.error}", err=True)
    write_report(REPORTERS[output.format](report, output.render), output)
    return int(report.exit_code)


def run_rules() -> int:
    rows = [
        [rule.ID, rule.NAME, str(rule.DEFAULT_SEVERITY), rule.NEEDS, rule_doc(rule).summary]
        for rule in RULES.values()
    ]
    headers = ["rule", "name", "default", "needs", "summary"]
    click.echo(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    return ExitCode.OK


def run_explain(rule_key: str) -> int:
    click.echo(explain_rule(RULES[resolve_rule(rule_key)]), nl=False)
    return ExitCode.OK


def run_plot(options: PlotOptions) -> int:
    if not options.output.lower().endswith(PLOT_SUFFIXES):
        raise UsageError(f"--output must end in {' or '.join(PLOT_SUFFIXES)}: {options.output}")
    settings = resolve_settings(options.config, Path.cwd())
    result = inspect_path(options.model, settings)
    if result.error is not None:
        click.echo(f"bncheck: error: {result.path}: {result.error}", err=True)
        return ExitCode.UNREADABLE
    from bncheck.plot import plot_model  # matplotlib costs a second to import

    try:
        plot_model(
            result, options.output, dead_variance=settings.rules["BN005"].options["max_variance"]
        )
    except OSError as exc:
        raise UsageError(f"cannot write --output {options.output}: {exc.strerror or exc}") from None
    return ExitCode.OK


def write_report(text: str, output: OutputOptions) -> None:
    if output.output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write --output {output.output}: {exc.strerror or exc}") from None


def use_color(output: str | None, stream: IO[str], environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, never into a file, and not when ``NO_COLOR`` is set to
    anything (https://no-color.org)."""
    return output is None and not environ.get("NO_COLOR") and stream.isatty()


def _rule_list(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--select BN001,BN002 --select BN009``: commas and repetition both work."""
    return tuple(key.strip() for value in values for key in value.split(",") if key.strip())


_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(sorted(REPORTERS)),
    default="table",
    show_default=True,
    help="Report format.",
)
_output_option = click.option(
    "--output", "-o", "output", metavar="FILE", help="Write the report to FILE instead of stdout."
)
_fail_on_option = click.option(
    "--fail-on",
    type=click.Choice([level.value for level in FailOn]),
    help="Exit with 1 when a finding is at least this severe (default: the configuration's "
    "fail-on, else error).",
)
_config_option = click.option(
    "--config",
    metavar="FILE",
    help="Configuration file (bncheck.toml or pyproject.toml) instead of the one found from "
    "the working directory upward.",
)
_select_option = click.option(
    "--select",
    multiple=True,
    callback=_rule_list,
    metavar="RULES",
    help="Run only these rules (IDs or names, comma-separated), whatever the configuration says.",
)
_ignore_option = click.option(
    "--ignore",
    multiple=True,
    callback=_rule_list,
    metavar="RULES",
    help="Turn these rules off as well (IDs or names, comma-separated).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bncheck")
def cli() -> None:
    """Check the BatchNormalization layers of saved TensorFlow/Keras models.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage error,
    3 an input could not be read.
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@_format_option
@_output_option
@_fail_on_option
@_config_option
@_select_option
@_ignore_option
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Read this many models at once, each in its own process.",
)
def inspect(
    paths: tuple[str, ...],
    output_format: str,
    output: str | None,
    fail_on: str | None,
    config: str | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    jobs: int,
) -> int:
    """Report the health of every BatchNorm layer in models, checkpoints and SavedModels.

    A folder is searched recursively for models, recognised by their content. Reads .keras, .h5
    and weights files directly, without TensorFlow; checkpoints and SavedModels with TensorFlow's
    checkpoint reader. Never runs code from them.
    """
    return run_inspect(
        InspectOptions(
            paths=paths,
            config=_config(config, select, ignore, fail_on),
            output=_output(output_format, output),
            jobs=jobs,
        )
    )


@cli.command()
@click.argument("path", metavar="CKPT")
@click.option(
    "--model",
    metavar="MODEL",
    help="Also check that every BatchNorm layer of MODEL (any format) finds its variables.",
)
@_format_option
@_output_option
@_fail_on_option
@_config_option
@_select_option
@_ignore_option
def checkpoint(
    path: str,
    model: str | None,
    output_format: str,
    output: str | None,
    fail_on: str | None,
    config: str | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
) -> int:
    """Verify that a checkpoint keeps every BatchNorm layer's moving statistics.

    CKPT is a checkpoint prefix (model.ckpt-5), its .index file, a directory holding a
    `checkpoint` file or .index files, or a SavedModel directory.
    """
    return run_checkpoint(
        CheckpointOptions(
            path=path,
            model=model,
            config=_config(config, select, ignore, fail_on),
            output=_output(output_format, output),
        )
    )


def _config(
    config: str | None, select: tuple[str, ...], ignore: tuple[str, ...], fail_on: str | None
) -> ConfigOptions:
    return ConfigOptions(
        config=config,
        select=select,
        ignore=ignore,
        fail_on=FailOn(fail_on) if fail_on is not None else None,
    )


def _output(output_format: str, output: str | None) -> OutputOptions:
    return OutputOptions(
        format=output_format,
        output=output,
        render=RenderOptions(color=use_color(output, sys.stdout, os.environ)),
    )


@cli.command()
def rules() -> int:
    """List every rule: ID, name, default severity, and what it needs."""
    return run_rules()


@cli.command()
@click.argument("rule")
def explain(rule: str) -> int:
    """Explain a rule (by ID or name): what it means, why it matters, how to fix it."""
    return run_explain(rule)


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option(
    "--output",
    "-o",
    "output",
    required=True,
    metavar="FILE",
    help="Image to write: .png or .svg.",
)
@_config_option
def plot(model: str, output: str, config: str | None) -> int:
    """Draw the BatchNorm layers of MODEL in depth order: the spread of the moving statistics,
    dead channels, and the layers with findings."""
    return run_plot(PlotOptions(model=model, output=output, config=ConfigOptions(config=config)))


def main(argv: list[str] | None = None) -> None:
    """Entry point: every user error is one line on stderr and an exit code, never a traceback."""
    try:
        code: Any = cli.main(args=argv, prog_name="bncheck", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        code = ExitCode.USAGE
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "bncheck"
        click.echo(f"bncheck: error: {exc.format_message()} (see '{command} --help')", err=True)
        code = ExitCode.USAGE
    except UsageError as exc:
        click.echo(f"bncheck: error: {exc}", err=True)
        code = ExitCode.USAGE
    except click.exceptions.Abort:
        click.echo("bncheck: interrupted", err=True)
        code = 130
    sys.exit(int(code or 0))
