"""Command line: parse flags into the plain option objects of ``app.py``, and hand them to the
one function there that runs each command. No logic beyond wiring."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import IO, Any

import click

from bncheck import __version__
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
from bncheck.probe.options import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_SAMPLES,
    DEFAULT_TIMEOUT,
    ProbeOptions,
)
from bncheck.reporters import REPORTERS
from bncheck.reporters.options import RenderOptions
from bncheck.text import shown


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


_batch_size_option = click.option(
    "--batch-size",
    # One sample has no batch statistics: its variance is zero wherever a channel holds one
    # value per sample (after a Dense layer), which would wreck every estimate.
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Samples per batch (at least 2).",
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


def _limit_options(timeout: float) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """The limits of the worker process that loads and runs the model."""
    return functools.partial(_add_limit_options, timeout=timeout)


def _add_limit_options(command: Callable[..., int], timeout: float) -> Callable[..., int]:
    command = click.option(
        "--probe-memory",
        type=click.IntRange(min=0),
        default=DEFAULT_MEMORY_MIB,
        show_default=True,
        metavar="MIB",
        help="Stop running a model whose process needs more resident memory (0: no limit).",
    )(command)
    return click.option(
        "--probe-timeout",
        type=click.FloatRange(min=0),
        default=timeout,
        show_default=True,
        metavar="SECONDS",
        help="Stop running a model that takes longer, loading included (0: no limit).",
    )(command)


_PROBE_ONLY = (
    "--probe-timeout",
    "--probe-memory",
    "--labels",
    "--feature",
    "--label",
    "--samples",
    "--batch-size",
    "--seed",
    "--image-size",
    "--rescale",
    "--input-shape",
    "--unsafe",
    "--custom-objects",
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


_rescale_option = click.option(
    "--rescale", type=_Fraction(), help="Multiply pixel values, e.g. 1/255 (image folders)."
)


_labels_option = click.option(
    "--labels",
    metavar="FILE.npy",
    help="Labels for --data, one per sample, so that verdicts rest on a measured metric.",
)


def _samples_option(default: int | None, text: str) -> Callable[[Any], Any]:
    return click.option(
        "--samples",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        metavar="N",
        help=f"{text}, in shuffled batches of --batch-size.",
    )


_image_size_option = click.option(
    "--image-size",
    nargs=2,
    type=click.IntRange(min=1),
    metavar="H W",
    help="Resize images to H x W (image folders).",
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
        ),
        click.option(
            "--label",
            metavar="NAME:DTYPE[:D1,...]",
            help="The feature of the --tfrecord records that holds the labels.",
        ),
        click.option(
            "--dataset-fn",
            metavar="FILE.py:NAME",
            help="Your own function returning a tf.data.Dataset (or an iterable) of x or (x, y) "
            "elements; the file is run, as --custom-objects is (the model file never is).",
        ),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _probe_options(command: Callable[..., int]) -> Callable[..., int]:
    """The options that run the model: --probe, --data and what shapes the probe batch."""
    decorators: list[Callable[[Any], Any]] = [
        click.option(
            "--probe",
            is_flag=True,
            help="Also run each model with Keras/TensorFlow in inference and training mode.",
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
        ),
        _unsafe_option,
        _custom_objects_option,
        _limit_options(DEFAULT_TIMEOUT),
        click.pass_context,
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def _probe_from(
    ctx: click.Context,
    probe: bool,
    data: str | None,
    labels: str | None,
    tfrecord: str | None,
    features: tuple[str, ...],
    label: str | None,
    dataset_fn: str | None,
    samples: int,
    batch_size: int,
    seed: int,
    image_size: tuple[int, int] | None,
    rescale: float | None,
    input_shapes: tuple[str, ...],
    unsafe: bool,
    custom_objects: str | None,
    probe_timeout: float,
    probe_memory: int,
) -> ProbeOptions | None:
    """How to run the models, or ``None`` when neither --probe nor data asks for it."""
    if not probe and data is None and tfrecord is None and dataset_fn is None:
        _reject_probe_only_options(ctx)
        return None
    from bncheck.probe.data import parse_input_shape
    from bncheck.probe.streams import parse_dataset_fn, parse_records

    return ProbeOptions(
        data=data,
        labels=labels,
        samples=samples,
        batch_size=batch_size,
        seed=seed,
        image_size=image_size or None,
        rescale=rescale,
        input_shapes=dict(parse_input_shape(text) for text in input_shapes),
        unsafe=unsafe,
        custom_objects=custom_objects,
        records=parse_records(tfrecord, features, label),
        dataset_fn=parse_dataset_fn(dataset_fn),
        timeout=probe_timeout or None,
        memory_mib=probe_memory or None,
    )


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
def inspect(
    ctx: click.Context,
    paths: tuple[str, ...],
    output_format: str,
    output: str | None,
    fail_on: str | None,
    config: str | None,
    select: tuple[str, ...],
    ignore: tuple[str, ...],
    jobs: int,
    fail_under: tuple[str, ...],
    probe: bool,
    data: str | None,
    labels: str | None,
    tfrecord: str | None,
    features: tuple[str, ...],
    label: str | None,
    dataset_fn: str | None,
    samples: int,
    batch_size: int,
    seed: int,
    image_size: tuple[int, int],
    rescale: float | None,
    input_shapes: tuple[str, ...],
    unsafe: bool,
    custom_objects: str | None,
    probe_timeout: float,
    probe_memory: int,
) -> int:
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
    probe_options = _probe_from(
        ctx,
        probe,
        data,
        labels,
        tfrecord,
        features,
        label,
        dataset_fn,
        samples,
        batch_size,
        seed,
        image_size,
        rescale,
        input_shapes,
        unsafe,
        custom_objects,
        probe_timeout,
        probe_memory,
    )
    if fail_under and probe_options is None:
        raise UsageError("--fail-under needs labelled --data to measure the metric on")
    return run_inspect(
        InspectOptions(
            paths=paths,
            config=replace(
                _config(config, select, ignore, fail_on), rule_options=_bounds(fail_under)
            ),
            output=_output(output_format, output),
            jobs=jobs,
            probe=probe_options,
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
def plot(
    ctx: click.Context,
    model: str,
    output: str,
    config: str | None,
    probe: bool,
    data: str | None,
    labels: str | None,
    tfrecord: str | None,
    features: tuple[str, ...],
    label: str | None,
    dataset_fn: str | None,
    samples: int,
    batch_size: int,
    seed: int,
    image_size: tuple[int, int],
    rescale: float | None,
    input_shapes: tuple[str, ...],
    unsafe: bool,
    custom_objects: str | None,
    probe_timeout: float,
    probe_memory: int,
) -> int:
    """Draw the BatchNorm layers of MODEL in depth order: the spread of the moving statistics,
    dead channels, and the layers with findings. With --probe or --data, also each layer's
    staleness on the data and where an inference collapse starts."""
    return run_plot(
        PlotOptions(
            model=model,
            output=output,
            config=ConfigOptions(config=config),
            probe=_probe_from(
                ctx,
                probe,
                data,
                labels,
                tfrecord,
                features,
                label,
                dataset_fn,
                samples,
                batch_size,
                seed,
                image_size,
                rescale,
                input_shapes,
                unsafe,
                custom_objects,
                probe_timeout,
                probe_memory,
            ),
        )
    )


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
@click.option("--in-place", is_flag=True, help="Allow OUT to be MODEL itself (or omit -o).")
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
# Recalibration runs over all the data by default, for as long as that takes: no time limit
# unless asked for (the memory limit holds).
@_limit_options(0)
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
    help="The devices of --strategy mirrored, e.g. /gpu:0,/gpu:1 (default: every local GPU).",
)
@_fail_on_option
@_config_option
def recalibrate(
    model: str,
    data: str | None,
    labels: str | None,
    tfrecord: str | None,
    features: tuple[str, ...],
    label: str | None,
    dataset_fn: str | None,
    output: str | None,
    in_place: bool,
    validate: str | None,
    validate_labels: str | None,
    force: bool,
    samples: int | None,
    batch_size: int,
    include_frozen: bool,
    include_untouched: bool,
    image_size: tuple[int, int],
    rescale: float | None,
    seed: int,
    unsafe: bool,
    custom_objects: str | None,
    probe_timeout: float,
    probe_memory: int,
    strategy: str | None,
    devices: str | None,
    fail_on: str | None,
    config: str | None,
) -> int:
    """Re-estimate the moving statistics of BatchNorm layers exactly from data, verified.

    Measures the model with the stored and with the re-estimated statistics (the metric on
    --validate, or on labelled --data; else how many predictions change) and writes OUT in
    MODEL's format (.keras or .h5), with only moving_mean and moving_variance changed, unless the
    result measures worse or cannot be verified (then exit 1; --force writes anyway). Exits like
    inspect on the repaired model otherwise (probed on --validate, else on the data).

    With --strategy the passes run through tf.distribute; see docs/distributed.md.
    """
    from bncheck.probe.streams import parse_dataset_fn, parse_records
    from bncheck.recalibrate.options import RecalibrateOptions

    return run_recalibrate(
        RecalibrateOptions(
            model=model,
            data=data,
            labels=labels,
            output=output,
            in_place=in_place,
            validate=validate,
            validate_labels=validate_labels,
            force=force,
            samples=samples,
            batch_size=batch_size,
            include_frozen=include_frozen,
            include_untouched=include_untouched,
            image_size=image_size or None,
            rescale=rescale,
            seed=seed,
            unsafe=unsafe,
            custom_objects=custom_objects,
            records=parse_records(tfrecord, features, label),
            dataset_fn=parse_dataset_fn(dataset_fn),
            strategy=strategy,
            devices=tuple(device.strip() for device in (devices or "").split(",") if device),
            timeout=probe_timeout or None,
            memory_mib=probe_memory or None,
        ),
        _config(config, (), (), fail_on),
    )


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
        message = shown(exc.format_message())
        click.echo(f"bncheck: error: {message} (see '{shown(command)} --help')", err=True)
        code = ExitCode.USAGE
    except UsageError as exc:
        click.echo(f"bncheck: error: {shown(str(exc))}", err=True)
        code = ExitCode.USAGE
    except click.exceptions.Abort:
        click.echo("bncheck: interrupted", err=True)
        code = 130
    except Exception as exc:  # a bug: still one line, escaped (it may quote a file)
        from bncheck.isolation import one_line

        problem = shown(one_line(f"{type(exc).__name__}: {exc}"))
        click.echo(f"bncheck: error: internal error: {problem}; please report it", err=True)
        code = ExitCode.UNREADABLE
    sys.exit(int(code or 0))
