"""``bncheck.recalibrate``: the exact re-estimation of ``bncheck recalibrate``, called from
Python on a file or a live model, on any data, on one device or across many.

The engine is the command's (``command.reestimate``): the same choice of layers, the same
estimate, the same verification and the same rules for writing. Heavy imports (NumPy, Keras,
TensorFlow) happen inside the function.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bncheck.errors import ModelReadError, UsageError

if TYPE_CHECKING:
    from bncheck.model import ModelDescription
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
    from bncheck.probe import keras_model
    from bncheck.progress import Progress
    from bncheck.recalibrate import command, distribute

    if output is not None and in_place:
        raise UsageError("give output or in_place, not both")
    settings = resolve_settings(
        ConfigOptions(config=None if config is None else os.fspath(config)), Path.cwd()
    )
    plan = command.Plan(batch_size, samples, seed, include_frozen, include_untouched, settings)
    progress = Progress()
    source: str | None = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        try:
            description = command.writable_description(source)
            target = source if in_place else _target(output, source)
            custom = None if custom_objects is None else os.fspath(custom_objects)
            model = command.load(source, unsafe, custom, progress, strategy)
        except ModelReadError as exc:
            # Readers give the reason; the command line adds the path, and so does this.
            raise ModelReadError(f"{source}: {exc}") from None
        name = source
    else:
        if strategy is not None and not distribute.in_scope(strategy, model):
            raise UsageError(
                "the model's variables were not created under strategy.scope(): build or load "
                "it there"
            )
        description = _describe_live(model)
        name = str(model.name)
        target = name if in_place else _target(output, None)
    try:
        dataset = _open(data, keras_model.input_specs(model), "data", image_size, rescale)
        validation = None
        if validate is not None:
            validation = _open(validate, dataset.specs, "validate", image_size, rescale)
            if not validation.labelled:
                raise UsageError("validate has no labels: give (x, y) pairs")
        result = command.reestimate(
            model, description, dataset, validation, plan, progress, strategy, name, target
        )
    finally:
        progress.done()
    if target is None or result.verification is None:
        return result
    if result.refusal is not None and not force:
        return result
    if source is None and in_place:
        _assign(model, result.statistics)
        return result.written(target)
    if not distribute.is_chief(strategy):
        return replace(result, writer="the chief")
    if source is not None:
        from bncheck.recalibrate.write import write_model

        write_model(source, target, description.format, command.updates(description, result))
    else:
        _save_live(model, target, result.statistics)
    return result.written(target)


def _target(output: PathLike | None, model: str | None) -> str | None:
    """Where ``output`` asks to write: never over the model file, always in a folder that
    exists."""
    if output is None:
        return None
    target = os.fspath(output)
    if model is not None and os.path.exists(target) and os.path.samefile(target, model):
        raise UsageError(f"refusing to overwrite {model} (the model itself); pass in_place=True")
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {target}: no such directory {directory}")
    return target


def _open(
    data: Any,
    specs: Sequence[InputSpec] | None,
    where: str,
    image_size: tuple[int, int] | None,
    rescale: float | None,
) -> Dataset:
    """``data`` in any form the API takes, matched to the model's inputs."""
    from bncheck.probe.data import ArrayData, DataOptions, open_data
    from bncheck.probe.streams import StreamData

    if isinstance(data, (str, os.PathLike)):
        return open_data(DataOptions(os.fspath(data), None, image_size, rescale, where), specs)
    arrays = _arrays(data, specs)
    if arrays is not None:
        return ArrayData(DataOptions("arrays", option=where), specs, arrays)
    return StreamData(data, specs, f"{where} ({_kind(data)})")


def _kind(data: Any) -> str:
    """What a user calls the data: a tf.data dataset, not its private class (``_BatchDataset``)."""
    module = type(data).__module__
    if module.startswith("tensorflow") and hasattr(data, "element_spec"):
        return "tf.data dataset"
    return type(data).__name__


def _arrays(data: Any, specs: Sequence[InputSpec] | None) -> dict[str | None, Any] | None:
    """NumPy arrays of samples by input name (``None``: the only input), the labels as
    ``"y"``; ``None`` for data that is not arrays."""
    import numpy as np

    from bncheck.probe.data import LABELS_KEY

    if isinstance(data, np.ndarray):
        return {None: data}
    if isinstance(data, Mapping) and all(isinstance(v, np.ndarray) for v in data.values()):
        return dict(data)
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], np.ndarray)):
        return None
    inputs, labels = data
    if isinstance(inputs, (list, tuple)) and specs is not None and len(inputs) == len(specs):
        inputs = {spec.name: array for spec, array in zip(specs, inputs, strict=True)}
    found = _arrays(inputs, specs)
    return None if found is None or LABELS_KEY in found else {**found, LABELS_KEY: labels}


def _describe_live(model: Any) -> ModelDescription:
    """The BatchNorm layers of a live model, as a file's description gives them: what the
    choice of layers reads (trainable, statistics and initial values, momentum, where the
    statistics are)."""
    import numpy as np

    from bncheck.model import ARRAY_NAMES, BNLayer, ModelDescription
    from bncheck.probe import keras_model
    from bncheck.readers.keras_config import LayerConfig, bn_settings

    layers = []
    for path, layer in keras_model.batchnorm_layers(model):
        names = tuple(path.split("/"))
        config = LayerConfig(
            layer.name, type(layer).__name__, layer.get_config(), names, (), layer.trainable, ()
        )
        arrays = {
            name: np.asarray(getattr(layer, name).numpy())
            for name in ARRAY_NAMES
            if getattr(layer, name, None) is not None
        }
        # A live layer's arrays are located by its variables, as a file's are by datasets.
        locations = {name: getattr(layer, name).path for name in arrays}
        layers.append(
            BNLayer.from_arrays(
                arrays,
                path=path,
                name=layer.name,
                class_name=config.class_name,
                locations=locations,
                **bn_settings(config),
            )
        )
    return ModelDescription(path=str(model.name), format="live", layers=tuple(layers))


def _assign(model: Any, statistics: Mapping[str, Population]) -> None:
    from bncheck.probe import keras_model

    for path, layer in keras_model.batchnorm_layers(model):
        if path in statistics:
            layer.moving_mean.assign(statistics[path].mean.astype("float32"))
            layer.moving_variance.assign(statistics[path].variance.astype("float32"))


def _save_live(model: Any, target: str, statistics: Mapping[str, Population]) -> None:
    """``model.save(target)`` with the new statistics, the model keeping its own: saved to a
    temporary file in the target's folder and renamed over it, so a failure leaves no half
    file."""
    from bncheck.probe import keras_model

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
