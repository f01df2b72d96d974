"""Command line: parse options into plain objects, then hand them to one function per command."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from bncheck import __version__
from bncheck.engine import inspect_paths
from bncheck.errors import ModelReadError, UsageError
from bncheck.findings import ExitCode, FailOn
from bncheck.probe.data import parse_input_shape
from bncheck.probe.runner import ProbeOptions
from bncheck.progress import Progress
from bncheck.reporters import REPORTERS
from bncheck.settings import Settings


@dataclass(frozen=True)
class OutputOptions:
    """Where and how to write a report."""

    format: str
    output: str | None
    """File to write the report to; ``None`` for standard output."""


@dataclass(frozen=True)
class InspectOptions:
    paths: tuple[str, ...]
    settings: Settings
    output: OutputOptions
    probe: ProbeOptions | None = None
    """How to run the models; ``None`` for static inspection only."""


def run_inspect(options: InspectOptions) -> int:
    progress = Progress()
    try:
        report = inspect_paths(options.paths, options.settings, options.probe, progress.step)
    finally:
        progress.done()
    for model in report.models:
        if model.error is not None:
            click.echo(f"bncheck: error: {model.path}: {model.error}", err=True)
    write_report(REPORTERS[options.output.format](report), options.output)
    return int(report.exit_code)


def write_report(text: str, output: OutputOptions) -> None:
    if output.output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output.output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write --output {output.output}: {exc.strerror or exc}") from None


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
    default=FailOn.ERROR.value,
    show_default=True,
    help="Exit with 1 when a finding is at least this severe.",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bncheck")
def cli() -> None:
    """Check the BatchNormalization layers of saved TensorFlow/Keras models.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage error,
    3 an input could not be read.
    """


_batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Samples per batch.",
)
_seed_option = click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for picking and shuffling samples (and for synthetic data).",
)
_unsafe_option = click.option(
    "--unsafe",
    is_flag=True,
    help="Load and run models that hold code (Lambda layers, foreign functions). Only for "
    "files you trust.",
)
_custom_objects_option = click.option(
    "--custom-objects",
    metavar="FILE.py",
    help="Python file defining your own custom layers (it is run; the model file never is).",
)
_PROBE_ONLY = ("--batch-size", "--seed", "--input-shape", "--unsafe", "--custom-objects")


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@_format_option
@_output_option
@_fail_on_option
@click.option(
    "--probe",
    is_flag=True,
    help="Also run each model with Keras/TensorFlow in inference and training mode.",
)
@click.option(
    "--data",
    metavar="FILE",
    help="Real probe data: .npy (one input) or .npz (one array per input name). Implies --probe.",
)
@_batch_size_option
@_seed_option
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    metavar="[NAME=]D1,D2,...",
    help="Shape of an input without the batch dimension, for synthetic data where the model "
    "leaves dimensions unknown. Repeatable.",
)
@_unsafe_option
@_custom_objects_option
@click.pass_context
def inspect(
    ctx: click.Context,
    paths: tuple[str, ...],
    output_format: str,
    output: str | None,
    fail_on: str,
    probe: bool,
    data: str | None,
    batch_size: int,
    seed: int,
    input_shapes: tuple[str, ...],
    unsafe: bool,
    custom_objects: str | None,
) -> int:
    """Report the health of every BatchNorm layer in .keras, .h5 and weights files.

    Reads the files directly, without TensorFlow, and never runs code from them. With --probe
    (or --data) each model is also loaded and run; see the README for what that judges.
    """
    probe_options = None
    if probe or data is not None:
        probe_options = ProbeOptions(
            data=data,
            batch_size=batch_size,
            seed=seed,
            input_shapes=dict(parse_input_shape(text) for text in input_shapes),
            unsafe=unsafe,
            custom_objects=custom_objects,
        )
    else:
        _reject_probe_only_options(ctx)
    return run_inspect(
        InspectOptions(
            paths=paths,
            settings=Settings(fail_on=FailOn(fail_on)),
            output=OutputOptions(format=output_format, output=output),
            probe=probe_options,
        )
    )


class _Fraction(click.ParamType):
    """A positive number, written as a decimal or a fraction such as ``1/255``."""

    name = "number"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            return value
        numerator, _, denominator = str(value).partition("/")
        try:
            number = float(numerator) / float(denominator or 1)
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or a fraction like 1/255", param, ctx)
        if not number > 0:
            self.fail(f"{value!r} is not positive", param, ctx)
        return number


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option(
    "--data",
    required=True,
    metavar="FILE_OR_DIR",
    help=".npy (one input), .npz (one array per input name) or a folder of images.",
)
@click.option("--output", "-o", metavar="OUT", help="Where to write the repaired model.")
@click.option("--in-place", is_flag=True, help="Allow OUT to be MODEL itself (or omit -o).")
@click.option(
    "--batches", type=click.IntRange(min=1), help="Use at most N batches (default: all the data)."
)
@_batch_size_option
@click.option(
    "--include-frozen",
    is_flag=True,
    help="Also recalibrate trainable=False layers (they keep their statistics by default).",
)
@click.option(
    "--image-size",
    nargs=2,
    type=click.IntRange(min=1),
    metavar="H W",
    help="Resize images to H x W (image folders).",
)
@click.option(
    "--rescale", type=_Fraction(), help="Multiply pixel values, e.g. 1/255 (image folders)."
)
@_seed_option
@_unsafe_option
@_custom_objects_option
@_fail_on_option
def recalibrate(
    model: str,
    data: str,
    output: str | None,
    in_place: bool,
    batches: int | None,
    batch_size: int,
    include_frozen: bool,
    image_size: tuple[int, int] | None,
    rescale: float | None,
    seed: int,
    unsafe: bool,
    custom_objects: str | None,
    fail_on: str,
) -> int:
    """Re-estimate the moving statistics of every BatchNorm layer exactly from data.

    Writes OUT in MODEL's format (.keras or .h5) with only moving_mean and moving_variance
    changed, prints how far each statistic moved and the probe's verdict before and after, and
    exits like inspect on the repaired model.
    """
    from bncheck.recalibrate.command import RecalibrateOptions
    from bncheck.recalibrate.command import recalibrate as run
    from bncheck.reporters import recalibration

    options = RecalibrateOptions(
        model=model,
        data=data,
        output=output,
        in_place=in_place,
        batches=batches,
        batch_size=batch_size,
        include_frozen=include_frozen,
        image_size=image_size or None,
        rescale=rescale,
        seed=seed,
        unsafe=unsafe,
        custom_objects=custom_objects,
        settings=Settings(fail_on=FailOn(fail_on)),
    )
    progress = Progress()
    try:
        result = run(options, progress)
    except ModelReadError as exc:
        click.echo(f"bncheck: error: {model}: {exc}", err=True)
        return int(ExitCode.UNREADABLE)
    finally:
        progress.done()
    click.echo(recalibration.render(result), nl=False)
    return int(result.report.exit_code)


def _reject_probe_only_options(ctx: click.Context) -> None:
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        flag = param.opts[0]
        if flag in _PROBE_ONLY and source is click.core.ParameterSource.COMMANDLINE:
            raise UsageError(f"{flag} only applies with --probe or --data")


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
