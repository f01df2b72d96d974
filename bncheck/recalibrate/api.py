"""``bncheck.recalibrate``: the exact re-estimation of ``bncheck recalibrate``, called from
Python on a file or a live model, on any data, on one device or across many.

The pipeline is the command's (``command.recalibrate``): the same choice of layers, the same
estimate, the same verification, the same checks of the output and the same rules for writing;
only where the model and the data come from, and how a live model is written, differ. Heavy
imports (NumPy, Keras, TensorFlow) happen inside the function.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bncheck.errors import ModelReadError, UsageError

if TYPE_CHECKING:
    from bncheck.probe.data import Dataset, InputSpec
    from bncheck.probe.results import Population
    from bncheck.recalibrate.results import Recalibration

#: A file or folder path, as a string or a path object.
PathLike = str | os.PathLike[str]


def recalibrate(
    model: Any,
    data: Any,
    *,
    strategy: Any = None,
    validate: Any = None,
    output: PathLike | None = None,
    in_place: bool = False,
    force: bool = False,
    batch_size: int = 32,
    samples: int | None = None,
    seed: int = 0,
    include_frozen: bool = False,
    include_untouched: bool = False,
    image_size: tuple[int, int] | None = None,
    rescale: float | None = None,
    unsafe: bool = False,
    custom_objects: PathLike | None = None,
    config: PathLike | None = None,
) -> Recalibration:
    """Re-estimate the moving statistics of a Keras model's BatchNorm layers from data, and
    measure what the new statistics change, like ``bncheck recalibrate``. Nothing is written
    unless ``output`` or ``in_place`` asks for it, and then only a verified result (or with
    ``force``).

    Each chosen layer's statistics are the average of its input's batch moments over the data,
    every BatchNorm layer normalising with batch statistics as in training and every other
    layer in inference mode (precise BatchNorm; see ``docs/recalibrate.md``). Frozen layers and
    layers whose statistics never moved while gamma and beta trained keep theirs by default.

    Args:
        model: a ``.keras`` or ``.h5`` file, or a live Keras 3 model. With ``strategy``, a live
            model must have been built or loaded under ``strategy.scope()``.
        data: what to estimate from. A ``tf.data.Dataset``; any iterable (a list, a generator,
            a ``keras.utils.PyDataset``) of batches or of single samples; NumPy arrays of
            samples (one array, an ``(x, y)`` tuple, or a dict by input name with the labels
            as ``"y"``); or a path, as ``--data`` takes it (``.npy``, ``.npz``, a folder of
            images). A dataset's elements are ``x``, ``(x, y)`` or ``(x, y, sample_weight)``,
            ``x`` being an array, a dict by input name or a tuple by input position. Batches
            are re-batched to ``batch_size``. Arrays and paths are shuffled with ``seed``;
            datasets and iterables are read in their own order.
        strategy: a ``tf.distribute.MirroredStrategy`` or ``MultiWorkerMirroredStrategy``:
            each batch is split across its replicas and the statistics are those one device
            computes on the same batches. ``None``: one device.
        validate: labelled held-out data, in any form ``data`` takes: the metric on it before
            and after decides whether the result may be written. Without it, ``data`` is
            measured (labelled or not).
        output: write the repaired model here. For a file, a copy in its format with only the
            moving statistics changed; for a live model, ``model.save(output)`` with the new
            statistics (the live model keeps its own). On a cluster, only the chief writes.
        in_place: write the new statistics into ``model`` itself: over the file, or into the
            live model's variables (on every worker).
        force: write even when the metric gets worse or, without labels, too many predictions
            change.
        batch_size: samples per (global) batch. The estimate depends a little on it, through
            the layers before each one; the batch size the model trained with is a good choice.
        samples: use at most this many samples of ``data``; needed for data that repeats
            without end.
        seed: shuffles arrays and path data, as ``--seed``.
        include_frozen: also re-estimate ``trainable=False`` layers.
        include_untouched: also re-estimate layers whose statistics never moved while gamma
            and beta trained.
        image_size: height and width to resize images to, for a folder of images.
        rescale: factor for image pixel values, e.g. ``1 / 255``, for a folder of images.
        unsafe: load a model file that holds code (Lambda layers); only for files you trust.
        custom_objects: a Python file defining the custom layers a model file needs (it is
            run; the model file never is).
        config: a ``bncheck.toml`` or ``pyproject.toml`` whose BN015 limits judge a result
            without labels; by default the one found from the working directory upward.

    Returns:
        A ``Recalibration``: ``layers`` (how far each layer's statistics moved, or why it
        kept them), ``verification`` (the metric before and after where the data has labels,
        otherwise the share of changed top-1 predictions and the relative change of the
        outputs), ``refusal`` (why it is not to be written, or ``None``), ``statistics`` (the
        new moving mean and variance by layer path) and ``written_to``.

    Raises:
        UsageError: data that does not fit the model, conflicting arguments, an output that
            cannot be written, a model that needs ``unsafe`` or ``custom_objects``, a model of
            a format recalibrate does not write (SavedModel, checkpoint, weights-only, PyTorch).
        ModelReadError: a model file that cannot be read or loaded.
    """
    from bncheck.config import ConfigOptions, resolve_settings
    from bncheck.live import describe
    from bncheck.probe.runtimes import keras_model
    from bncheck.progress import Progress
    from bncheck.recalibrate import command, distribute
    from bncheck.recalibrate.options import RecalibrateOptions

    if output is not None and in_place:
        raise UsageError("give output or in_place, not both")
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    options = RecalibrateOptions(
        model=str(model.name) if source is None else source,
        data=None,
        output=None if output is None else os.fspath(output),
        in_place=in_place,
        force=force,
        samples=samples,
        batch_size=batch_size,
        include_frozen=include_frozen,
        include_untouched=include_untouched,
        image_size=image_size,
        rescale=rescale,
        seed=seed,
        unsafe=unsafe,
        custom_objects=None if custom_objects is None else os.fspath(custom_objects),
        settings=resolve_settings(
            ConfigOptions(config=None if config is None else os.fspath(config)), Path.cwd()
        ),
    )
    arguments = command.Spelling("output", "in_place=True", required=False)
    progress = Progress()
    if source is not None:
        try:
            description = command.writable_description(source)
            if description.format not in command.WRITABLE:
                raise UsageError(
                    f"{source}: bncheck.recalibrate runs Keras models (.keras, .h5, or a live "
                    f"model); recalibrate a {description.format} input with the command line, "
                    f"bncheck recalibrate {source} --data ... -o OUT"
                )
            target = command.output_path(
                source, options.output, in_place, description.format, arguments
            )
            model = command.load(source, unsafe, options.custom_objects, progress, strategy)
        except ModelReadError as exc:
            # Readers give the reason; the command line adds the path, and so does this.
            raise ModelReadError(f"{source}: {exc}") from None
    else:
        if strategy is not None and not distribute.in_scope(strategy, model):
            raise UsageError(
                "the model's variables were not created under strategy.scope(): build or load "
                "it there"
            )
        description = describe(model)
        # A live model is written by its variables (in place) or by model.save (any suffix
        # Keras saves to); there is no model file to protect.
        target = (
            options.model
            if in_place
            else command.output_path(None, options.output, False, None, arguments)
        )

    def estimate() -> tuple[Recalibration, bool]:
        try:
            dataset = _open(data, keras_model.input_specs(model), "data", image_size, rescale)
            validation = None
            if validate is not None:
                validation = _open(validate, dataset.specs, "validate", image_size, rescale)
                if not validation.labelled:
                    raise UsageError("validate has no labels: give (x, y) pairs")
            result = command.reestimate(
                model,
                description,
                dataset,
                validation,
                command.Plan.of(options),
                progress,
                strategy,
                options.model,
                target,
            )
        finally:
            progress.done()
        return result, distribute.is_chief(strategy)

    def write(result: Recalibration) -> Recalibration:
        assert target is not None
        if source is not None:
            from bncheck.recalibrate.write import write_model

            updates = command.updates(description, result)
            write_model(source, target, description.format, updates)
        elif in_place:
            _assign(model, result.statistics)
        else:
            _save_live(model, target, result.statistics)
        return result.written(target)

    job = command.Job(estimate, target, write, on_every_worker=source is None and in_place)
    return command.recalibrate(options, progress, job)


def _open(
    data: Any,
    specs: Sequence[InputSpec] | None,
    where: str,
    image_size: tuple[int, int] | None,
    rescale: float | None,
) -> Dataset:
    """``data`` in any form the API takes, matched to the model's inputs."""
    from bncheck.probe.data import ArrayData, DataOptions, arrays_of, open_data
    from bncheck.probe.data.streams import StreamData

    if isinstance(data, (str, os.PathLike)):
        return open_data(DataOptions(os.fspath(data), None, image_size, rescale, where), specs)
    arrays = arrays_of(data, specs)
    if arrays is not None:
        return ArrayData(DataOptions("arrays", option=where), specs, arrays)
    return StreamData(data, specs, f"{where} ({_kind(data)})")


def _kind(data: Any) -> str:
    """What a user calls the data: a tf.data dataset, not its private class (``_BatchDataset``)."""
    module = type(data).__module__
    if module.startswith("tensorflow") and hasattr(data, "element_spec"):
        return "tf.data dataset"
    return type(data).__name__


def _assign(model: Any, statistics: Mapping[str, Population]) -> None:
    from bncheck.probe.runtimes import keras_model

    for path, layer in keras_model.batchnorm_layers(model):
        if path in statistics:
            layer.moving_mean.assign(statistics[path].mean.astype("float32"))
            layer.moving_variance.assign(statistics[path].variance.astype("float32"))


def _save_live(model: Any, target: str, statistics: Mapping[str, Population]) -> None:
    """``model.save(target)`` with the new statistics, the model keeping its own: saved to a
    temporary file in the target's folder and renamed over it, so a failure leaves no half
    file."""
    from bncheck.probe.runtimes import keras_model

    old = {
        path: (layer.moving_mean.numpy(), layer.moving_variance.numpy())
        for path, layer in keras_model.batchnorm_layers(model)
    }
    suffix = Path(target).suffix
    handle, temporary = tempfile.mkstemp(
        prefix=f".{Path(target).name}.", suffix=suffix, dir=os.path.dirname(os.path.abspath(target))
    )
    os.close(handle)
    try:
        _assign(model, statistics)
        try:
            model.save(temporary)
        except (ValueError, OSError) as exc:
            raise UsageError(f"cannot write {target}: {keras_model.describe_error(exc)}") from None
        os.replace(temporary, target)
    finally:
        for path, layer in keras_model.batchnorm_layers(model):
            layer.moving_mean.assign(old[path][0])
            layer.moving_variance.assign(old[path][1])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
