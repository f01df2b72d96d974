"""Command line: parse flags into the plain option objects of ``app.py``, and hand them to the
one function there that runs each command. No logic beyond wiring."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import IO, Any, TypeVar

import click

from bncheck import __version__, interrupts
from bncheck.app import (
    CheckpointOptions,
    InspectOptions,
    OutputOptions,
    PlotOptions,
    run_checkpoint,
    run_explain,
    run_inspect,
    run_plot,
    run_recalibrate,
    run_rules,
)
from bncheck.config import ConfigOptions
from bncheck.errors import UsageError
from bncheck.findings import ExitCode, FailOn
from bncheck.interrupts import Terminated
from bncheck.isolation import DEFAULT_LIMITS
from bncheck.probe.options import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_SAMPLES,
    DEFAULT_TIMEOUT,
    ProbeOptions,
)
from bncheck.reporters import REPORTERS
from bncheck.reporters.options import DEFAULT_WIDTH, RenderOptions
from bncheck.text import shown


def use_color(output: str | None, stream: IO[str] | None, environ: Mapping[str, str]) -> bool:
    """Colour only on a terminal, never into a file, and not when ``NO_COLOR`` is set to
    anything (https://no-color.org). ``stream`` is ``None`` when the process started with it
    closed."""
    return output is None and not environ.get("NO_COLOR") and stream is not None and stream.isatty()


_T = TypeVar("_T")


def options_from(kind: Callable[..., _T], params: Mapping[str, Any], **derived: Any) -> _T:
    """The option object ``kind`` (a dataclass) built by keyword: each field from the click
    parameter of the same name, or from ``derived`` where a value combines several flags. A
    field no flag sets keeps its default, so a new option is one declaration and one field."""
    names = {field.name for field in dataclasses.fields(kind)}  # type: ignore[arg-type]
    given = (names & params.keys()) - derived.keys()
    return kind(**{name: params[name] for name in given}, **derived)


def _rule_list(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> tuple[str, ...]:
    """``--select BN001,BN002 --select BN009``: commas and repetition both work."""
    return tuple(key.strip() for value in values for key in value.split(",") if key.strip())


def _no_limit(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """A limit of 0 is no limit."""
    return value or None


def _unless_empty(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """``nargs`` options that were not given arrive as ``()``."""
    return value or None


def _fail_on(ctx: click.Context, param: click.Parameter, value: str | None) -> FailOn | None:
    return None if value is None else FailOn(value)


def _device_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    return tuple(device.strip() for device in (value or "").split(",") if device)


class _ProbeOnly(click.Option):
    """An option of inspect and plot that only means something when the model is run."""


_format_option = click.option(
    "--format",
    type=click.Choice(sorted(REPORTERS)),
    default="table",
    show_default=True,
    help="Report format.",
)
_output_option = click.option(
    "--output",
    "-o",
    "output",
    metavar="FILE",
    help="Write the report to FILE instead of stdout ('-': stdout).",
)
_fail_on_option = click.option(
    "--fail-on",
    type=click.Choice([level.value for level in FailOn]),
    callback=_fail_on,
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


class _Seconds(click.ParamType):
    """A finite number of seconds: above 0 (``positive``), or at least 0."""

    name = "seconds"

    def __init__(self, positive: bool) -> None:
        self.positive = positive

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and (seconds > 0 if self.positive else seconds >= 0)):
            least = "above 0" if self.positive else "0 or more"
            self.fail(f"{value!r} is not a finite number of seconds {least}", param, ctx)
        return seconds


_read_timeout_option = click.option(
    "--read-timeout",
    type=_Seconds(positive=True),
    default=DEFAULT_LIMITS.seconds,
    show_default=True,
    metavar="SECONDS",
    help="Give up reading a file (it is read in a process of its own) that takes longer.",
)
_ignore_option = click.option(
    "--ignore",
    multiple=True,
    callback=_rule_list,
    metavar="RULES",
    help="Turn these rules off as well (IDs or names, comma-separated).",
)


class _Stopped(Exception):
    """Ctrl-C or SIGTERM while a command ran, carried past click, which would answer it with a
    blank line of its own before bncheck's one line."""

    def __init__(self, terminated: bool) -> None:
        super().__init__()
        self.terminated = terminated


class _Commands(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Stopped(isinstance(exc, Terminated)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="bncheck")
def cli() -> None:
    """Check the BatchNormalization layers of saved TensorFlow/Keras models.

    Exit codes: 0 nothing at or above --fail-on, 1 findings at or above it, 2 usage error,
    3 an input could not be read.
    """


_batch_size_option = click.option(
    "--batch-size",
    # One sample has no batch statistics: its variance is zero wherever a channel holds one
    # value per sample (after a Dense layer), which would wreck every estimate.
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Samples per batch (at least 2).",
    cls=_ProbeOnly,
)
_seed_option = click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed for picking and shuffling samples (and for synthetic data).",
    cls=_ProbeOnly,
)
_unsafe_option = click.option(
    "--unsafe",
    is_flag=True,
    help="Load and run models that hold code (Lambda layers, foreign functions). Only for "
    "files you trust.",
    cls=_ProbeOnly,
)
_custom_objects_option = click.option(
    "--custom-objects",
    metavar="FILE.py",
    help="Python file defining your own custom layers (it is run; the model file never is).",
    cls=_ProbeOnly,
)


def _limit_options(timeout: float) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """The limits of the worker process that loads and runs the model."""
    return functools.partial(_add_limit_options, timeout=timeout)


def _add_limit_options(command: Callable[..., int], timeout: float) -> Callable[..., int]:
    command = click.option(
        "--probe-memory",
        "memory_mib",
        type=click.IntRange(min=0),
        default=DEFAULT_MEMORY_MIB,
        show_default=True,
        metavar="MIB",
        callback=_no_limit,
        help="Stop running a model whose process needs more resident memory (0: no limit).",
        cls=_ProbeOnly,
    )(command)
    return click.option(
        "--probe-timeout",
        "timeout",
        type=_Seconds(positive=False),
        default=timeout,
        show_default=True,
        metavar="SECONDS",
        callback=_no_limit,
        help="Stop running a model that takes longer, loading included (0: no limit).",
        cls=_ProbeOnly,
    )(command)


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
        if not (number > 0 and math.isfinite(number)):
            self.fail(f"{value!r} is not a positive finite number", param, ctx)
        return number


_rescale_option = click.option(
    "--rescale",
    type=_Fraction(),
    help="Multiply pixel values, e.g. 1/255 (image folders).",
    cls=_ProbeOnly,
)


_labels_option = click.option(
    "--labels",
    metavar="FILE.npy",
    help="Labels for --data, one per sample, so that verdicts rest on a measured metric.",
    cls=_ProbeOnly,
)


def _samples_option(default: int | None, text: str) -> Callable[[Any], Any]:
    return click.option(
        "--samples",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        metavar="N",
        help=f"{text}, in shuffled batches of --batch-size.",
        cls=_ProbeOnly,
    )


_image_size_option = click.option(
    "--image-size",
    nargs=2,
    type=click.IntRange(min=1),
    metavar="H W",
    callback=_unless_empty,
    help="Resize images to H x W (image folders).",
    cls=_ProbeOnly,
)


def _stream_options(command: Callable[..., int]) -> Callable[..., int]:
    """Data that streams instead of --data: TFRecord files, or the user's dataset function."""
    decorators: list[Callable[[Any], Any]] = [
        click.option(
            "--tfrecord",
            metavar="PATTERN",
            help="TFRecord files of tf.train.Example records (a glob such as 'data-*.tfrecord'; "
            "quote it), read with the features --feature declares.",
        ),
        click.option(
            "--feature",
            "features",
            multiple=True,
            metavar="NAME:DTYPE:D1,D2,...",
            help="A feature of the --tfrecord records (DTYPE float32 or int64), one per model "
            "input, matched by input name. Repeatable.",
            cls=_ProbeOnly,
        ),
        click.option(
            "--label",
            metavar="NAME:DTYPE[:D1,...]",
            help="The feature of the --tfrecord records that holds the labels.",
            cls=_ProbeOnly,
        ),
        click.option(
            "--dataset-fn",
            metavar="FILE.py:NAME",
            help="Your own function returning a tf.data.Dataset (or an iterable) of x or (x, y) "
            "elements, or arrays x or (x, y); the file is run, as --custom-objects is (the model "
            "file never is).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _streams(params: Mapping[str, Any]) -> dict[str, Any]:
    """The option fields that --tfrecord, --feature, --label and --dataset-fn make together."""
    from bncheck.probe.data.streams import parse_dataset_fn, parse_records

    return {
        "records": parse_records(params["tfrecord"], params["features"], params["label"]),
        "dataset_fn": parse_dataset_fn(params["dataset_fn"]),
    }


def _probe_options(command: Callable[..., int]) -> Callable[..., int]:
    """The options that run the model: --probe, --data and what shapes the probe batch."""
    decorators: list[Callable[[Any], Any]] = [
        click.option(
            "--probe",
            is_flag=True,
            help="Also run each model (Keras/TensorFlow, ONNX or TorchScript) in inference and "
            "training mode.",
        ),
        click.option(
            "--data",
            metavar="FILE_OR_DIR",
            help="Real data, implies --probe: .npy (one input), .npz (one array per input name, "
            "labels as 'y'), or a folder of images (class subfolders give labels).",
        ),
        _labels_option,
        _stream_options,
        _samples_option(DEFAULT_SAMPLES, "Run at most N samples of --data"),
        _batch_size_option,
        _seed_option,
        _image_size_option,
        _rescale_option,
        click.option(
            "--input-shape",
            "input_shapes",
            multiple=True,
            metavar="[NAME=]D1,D2,...",
            help="Shape of an input without the batch dimension, for synthetic data where the "
            "model leaves dimensions unknown. Repeatable.",
            cls=_ProbeOnly,
        ),
        _unsafe_option,
        _custom_objects_option,
        click.option(
            "--architecture",
            metavar="MODEL",
            help="For a weights-only file (.weights.h5, a ModelCheckpoint's weights): the .keras "
            "or .h5 file of the same network, whose architecture the weights are loaded into to "
            "run it.",
            cls=_ProbeOnly,
        ),
        _limit_options(DEFAULT_TIMEOUT),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _probe(params: Mapping[str, Any]) -> ProbeOptions | None:
    """How to run the models, or ``None`` when neither --probe nor data asks for it."""
    starts = (params[name] is not None for name in ("data", "tfrecord", "dataset_fn"))
    if not params["probe"] and not any(starts):
        _reject_probe_only_options(click.get_current_context())
        return None
    from bncheck.probe.data import parse_input_shape

    shapes = dict(parse_input_shape(text) for text in params["input_shapes"])
    return options_from(ProbeOptions, params, input_shapes=shapes, **_streams(params))


def _reject_probe_only_options(ctx: click.Context) -> None:
    for param in ctx.command.params:
        if not isinstance(param, _ProbeOnly) or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE:
            raise UsageError(f"{param.opts[0]} only applies with --probe or --data")


def _config(params: Mapping[str, Any]) -> ConfigOptions:
    return options_from(ConfigOptions, params)


def _output(params: Mapping[str, Any]) -> OutputOptions:
    report = None if params["output"] == "-" else params["output"]  # "-": stdout, as usual
    color = use_color(report, sys.stdout, os.environ)
    # The text report wraps to the terminal it is read on; a file or pipe has no width of its
    # own, and a fixed one keeps what CI logs and saved reports show the same everywhere.
    width = _text_width(sys.stdout) if report is None else DEFAULT_WIDTH
    render = RenderOptions(color=color, width=width)
    return options_from(OutputOptions, params, output=report, render=render)


def _text_width(output: IO[str] | None) -> int:
    """The columns text wraps to: the terminal's, or ``DEFAULT_WIDTH`` in a file or a pipe,
    whose readers (CI logs, saved reports) have no width of their own."""
    terminal = output is not None and output.isatty()
    return shutil.get_terminal_size().columns if terminal else DEFAULT_WIDTH


@cli.command()
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@_format_option
@_output_option
@_fail_on_option
@_config_option
@_select_option
@_ignore_option
@_read_timeout_option
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Read this many models at once, each in its own process (static inspection only).",
)
@click.option(
    "--fail-under",
    "fail_under",
    multiple=True,
    metavar="METRIC=VALUE",
    help="Fail (BN023, exit 1) when the metric with the stored statistics on the labelled --data "
    "misses the bound: accuracy=0.9 (at least), mse=0.5 (at most).",
)
@_probe_options
def inspect(**params: Any) -> int:
    """Report the health of every BatchNorm layer in models, checkpoints and SavedModels.

    A folder is searched recursively for models, recognised by their content. Model files are
    read directly, only their BatchNorm arrays, and never run.

    With --probe (or --data) each model is also loaded and run. On real data (--data) each
    layer's statistics are re-estimated over up to --samples samples: BN014 compares them with
    the stored ones, BN015 says what re-estimating them would change (with labels, the measured
    accuracy or mean squared error). Synthetic data (--probe alone) judges collapse (BN013) and
    batch-dependent inference (BN016) only. Models holding code are not loaded without --unsafe.

    'bncheck rules' lists the rules, 'bncheck explain RULE' explains one.
    """
    probe = _probe(params)
    if params["fail_under"]:
        # A bound that cannot be measured is a mistake in the command, not a failing model.
        if probe is None or not any(
            params[name] is not None for name in ("data", "tfrecord", "dataset_fn")
        ):
            raise UsageError("--fail-under needs labelled --data to measure the metric on")
        probe = replace(probe, labels_needed_by="--fail-under")
    config = replace(_config(params), rule_options=_bounds(params["fail_under"]))
    return run_inspect(
        options_from(InspectOptions, params, config=config, output=_output(params), probe=probe)
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
@_read_timeout_option
def checkpoint(**params: Any) -> int:
    """Verify that a checkpoint keeps every BatchNorm layer's moving statistics.

    CKPT is a checkpoint prefix (model.ckpt-5), its .index file, a directory holding a
    `checkpoint` file or .index files, or a SavedModel directory.
    """
    return run_checkpoint(
        options_from(CheckpointOptions, params, config=_config(params), output=_output(params))
    )


#: ``--fail-under`` metric names, and BN023's option each sets.
_METRIC_BOUNDS = {
    "accuracy": "min_accuracy",
    "mse": "max_mean_squared_error",
    "mean_squared_error": "max_mean_squared_error",
}


def _bounds(fail_under: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """BN023's options from ``--fail-under METRIC=VALUE`` flags."""
    bounds: dict[str, float] = {}
    for text in fail_under:
        name, _, value = text.partition("=")
        option = _METRIC_BOUNDS.get(name.strip().lower())
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if option is None or not 0.0 <= number < float("inf"):
            raise UsageError(
                f"--fail-under {text!r}: give METRIC=VALUE, METRIC accuracy or mse and VALUE a "
                "number >= 0 (accuracy=0.9)"
            )
        if option == "min_accuracy" and number > 1.0:
            raise UsageError(f"--fail-under {text!r}: accuracy is a fraction from 0 to 1")
        bounds[option] = number
    return {"BN023": bounds} if bounds else {}


@cli.command()
def rules() -> int:
    """List every rule: ID, name, default severity, and what it needs."""
    return run_rules()


@cli.command()
@click.argument("rule")
@click.option(
    "--framework",
    type=click.Choice(["keras", "tensorflow", "pytorch", "onnx"]),
    default="keras",
    show_default=True,
    help="Explain it in this framework's words (running_mean, model.train() for PyTorch).",
)
def explain(rule: str, framework: str) -> int:
    """Explain a rule (by ID or name): what it means, why it matters, how to fix it."""
    return run_explain(rule, framework)


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
@_probe_options
def plot(**params: Any) -> int:
    """Draw the BatchNorm layers of MODEL in depth order: the spread of the moving statistics,
    dead channels, and the layers with findings. With --probe or --data, also each layer's
    staleness on the data and where an inference collapse starts."""
    probe = _probe(params)
    return run_plot(options_from(PlotOptions, params, config=_config(params), probe=probe))


@cli.command()
@click.argument("model", metavar="MODEL")
@click.option(
    "--data",
    metavar="FILE_OR_DIR",
    help="Data to estimate the statistics from: .npy (one input), .npz (one array per input "
    "name, labels as 'y') or a folder of images (or give --tfrecord or --dataset-fn).",
)
@_labels_option
@_stream_options
@click.option("--output", "-o", metavar="OUT", help="Where to write the repaired model.")
@click.option(
    "--in-place",
    is_flag=True,
    help="Allow OUT to be MODEL itself (or omit -o); Keras files and SavedModels only.",
)
@click.option(
    "--validate",
    metavar="FILE_OR_DIR",
    help="Labelled held-out data (.npz with 'y', or class subfolders of images): the metric "
    "before and after decides whether OUT is written.",
)
@click.option(
    "--validate-labels",
    metavar="FILE.npy",
    help="Labels for a --validate .npy file, one per sample.",
)
@click.option(
    "--architecture",
    metavar="MODEL",
    help="For a weights-only MODEL (.weights.h5): the .keras or .h5 file of the same network, "
    "whose architecture the weights are loaded into; OUT is the weights file, repaired.",
)
@click.option(
    "--runnable",
    metavar="FILE",
    help="For a MODEL that holds no architecture (a .pt/.pth state dict, a .safetensors file): "
    "the same network exported to ONNX or TorchScript, run to estimate the statistics; layers "
    "are matched by name.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write OUT even when the metric gets worse or the result cannot be verified.",
)
@_samples_option(None, "Use at most N samples of --data (default: all)")
@_batch_size_option
@click.option(
    "--include-frozen",
    is_flag=True,
    help="Also re-estimate trainable=False layers (layers after them learned with their "
    "statistics, so they keep them by default).",
)
@click.option(
    "--include-untouched",
    is_flag=True,
    help="Also re-estimate layers whose statistics were never updated while gamma and beta "
    "trained (the network may have learned with them, so they keep them by default).",
)
@_image_size_option
@_rescale_option
@_seed_option
@_unsafe_option
@_custom_objects_option
# Loading and estimating run the model like a probe, so the same limits hold: a graph that loops
# forever stops at --probe-timeout (0 lifts it for a long run over much data).
@_limit_options(DEFAULT_TIMEOUT)
@click.option(
    "--strategy",
    type=click.Choice(["mirrored", "multi-worker"]),
    help="Run with tf.distribute: 'mirrored' over the local GPUs (or --devices), "
    "'multi-worker' over the cluster in TF_CONFIG (run the command on every worker). The "
    "statistics are those one device computes.",
)
@click.option(
    "--devices",
    metavar="DEV,DEV,...",
    callback=_device_list,
    help="The devices of --strategy mirrored, e.g. /gpu:0,/gpu:1 (default: every local GPU).",
)
@_fail_on_option
@_config_option
def recalibrate(**params: Any) -> int:
    """Re-estimate the moving statistics of BatchNorm layers exactly from data, verified.

    Measures the model with the stored and with the re-estimated statistics (the metric on
    --validate, or on labelled --data; else how many predictions change) and writes OUT in
    MODEL's format, with only the moving statistics changed, unless the
    result measures worse or cannot be verified (then exit 1; --force writes anyway). Exits like
    inspect on the repaired model otherwise (probed on --validate, else on the data).

    ONNX models run with onnxruntime and TorchScript archives with PyTorch (--unsafe); a state
    dict or safetensors file is estimated through --runnable, its ONNX or TorchScript export.
    Only running_mean and running_var change, in a copy of MODEL.

    With --strategy the passes run through tf.distribute; see docs/distributed.md.
    """
    from bncheck.recalibrate.options import RecalibrateOptions

    options = options_from(RecalibrateOptions, params, **_streams(params))
    render = RenderOptions(
        color=use_color(None, sys.stdout, os.environ), width=_text_width(sys.stdout)
    )
    return run_recalibrate(options, _config(params), render)


def main(argv: list[str] | None = None) -> None:
    """Run bncheck with ``argv`` (the command line's by default) and exit with its code."""
    with interrupts.handled():
        code = run(argv)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run bncheck with ``argv`` and return its exit code: every user error is one line on
    stderr and an exit code, never a traceback. The caller answers Ctrl-C and SIGTERM with
    ``interrupts``' handlers (``main`` and the console script do)."""
    try:
        code: Any = cli.main(args=argv, prog_name="bncheck", standalone_mode=False)
        interrupts.check()  # a signal swallowed where the command could not see it
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        code = ExitCode.USAGE
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "bncheck"
        message = shown(exc.format_message())
        click.echo(f"bncheck: error: {message} (see '{shown(command)} --help')", err=True)
        code = ExitCode.USAGE
    except UsageError as exc:
        click.echo(f"bncheck: error: {shown(str(exc))}", err=True)
        code = ExitCode.USAGE
    except (_Stopped, click.exceptions.Abort, KeyboardInterrupt) as exc:
        terminated = isinstance(exc, _Stopped) and exc.terminated
        terminated = terminated or isinstance(exc.__cause__ or exc.__context__ or exc, Terminated)
        code = interrupts.answered(terminated)
    except Exception as exc:  # a bug: still one line, escaped (it may quote a file)
        from bncheck.isolation import one_line

        problem = shown(one_line(f"{type(exc).__name__}: {exc}"))
        click.echo(f"bncheck: error: internal error: {problem}; please report it", err=True)
        code = ExitCode.UNREADABLE
    return int(code or 0)
