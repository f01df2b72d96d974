"""Loading ``.keras`` and ``.h5`` models with Keras, and watching their BatchNorm layers run.

Keras is imported inside functions only. Every BatchNorm layer's ``call`` can be wrapped for the
length of one forward pass (``batchnorm_hooks``), which lets bncheck see each layer's input and
output wherever the layer sits (nested models, wrappers, custom layers) and run BatchNorm alone in
training mode while every other layer (Dropout, noise) stays in inference mode.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from bncheck import layer_paths
from bncheck.errors import ModelReadError
from bncheck.probe.data import InputSpec
from bncheck.probe.foreign import describe_error, run_user_file
from bncheck.readers import detect
from bncheck.records import record

#: Called after each BatchNorm call with the layer's path, the layer, its input and its output.
CallObserver = Callable[[str, Any, Any, Any], None]


def load_custom_objects(path: str) -> dict[str, Any]:
    """Run the user's ``--custom-objects`` file and collect what it defines or registers.

    The file is the user's own code, trusted explicitly; the model file never is.
    """
    import keras

    registered_before = dict(keras.saving.get_custom_objects())
    module = run_user_file(path, "--custom-objects")
    module_name = module.__name__
    defined = {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module_name
    }
    registered = {
        name: value
        for name, value in keras.saving.get_custom_objects().items()
        if name not in registered_before
    }
    return {**defined, **registered}


def builtin_layer_names() -> frozenset[str]:
    """Class names Keras's legacy ``.h5`` loader resolves without custom objects."""
    import keras

    names = {name for name, value in vars(keras.layers).items() if inspect.isclass(value)}
    return frozenset(names | {"Functional", "Model", "Sequential"})


def load_model(path: str, unsafe: bool, custom_objects: dict[str, Any]) -> Any:
    """``keras.models.load_model`` with ``safe_mode`` unless ``--unsafe``, never compiled.

    Keras picks its loader by file extension; bncheck recognises files by content, so a file
    with another name is loaded through a temporary symbolic link with the right one.
    """
    import keras

    found = detect.sniff(path)
    if found.runtime != "keras":
        raise ModelReadError("Keras cannot load this kind of file")
    suffix = found.suffixes[0]
    try:
        with _named_like(path, suffix) as keras_path, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras.models.load_model(
                keras_path, compile=False, safe_mode=not unsafe, custom_objects=custom_objects
            )
    except Exception as exc:  # Keras raises many kinds; the user needs one line
        raise ModelReadError(
            f"Keras cannot load the model ({describe_error(exc)}){_writer_hint(path)}"
        ) from None


#: Where Keras's message names the object whose weights did not load, and how they differ.
_FAILED_OBJECT = re.compile(r"for object <(\w+) name=([^,>]+)[^>]*>")
_SHAPES = re.compile(r"variable\.shape=(\([^)]*\)), Received: value\.shape=(\([^)]*\))")
#: The name Keras loads sharded weights from: it finds the shards beside the index.
SHARDS_SUFFIX = ".weights.json"


def load_weights(model: Any, path: str) -> None:
    """Load the weights-only file ``path`` into ``model`` as Keras's ``load_weights`` does: a
    Keras 3 weights file (``.weights.h5``, its layers under ``layers`` or ``vars``, or sharded
    ``.weights.json``) by the model's structure, an older one (``save_weights`` to ``.h5``) by
    layer name and order. Keras picks its loader by the name, so a file named otherwise is
    loaded through a link with the name its layout needs. Weights that do not fit raise
    ``ModelReadError`` naming the first layer Keras could not load."""
    import h5py

    from bncheck.readers.keras import weights_h5

    if detect.sniff(path).name == "keras-shards":
        if not path.endswith(SHARDS_SUFFIX):
            raise ModelReadError(
                f"Keras loads sharded weights from an index named {SHARDS_SUFFIX}, beside its "
                "shards: rename the index"
            )
        suffix = SHARDS_SUFFIX
    else:
        try:
            with h5py.File(path, "r") as handle:
                keras3 = weights_h5.is_keras3_layout(handle)
        except OSError as exc:
            raise ModelReadError(f"cannot read the weights ({describe_error(exc)})") from None
        suffix = ".weights.h5" if keras3 else ".h5"
    try:
        with _named_like(path, suffix) as weights_path, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_weights(weights_path)
    except Exception as exc:  # Keras raises many kinds for weights that do not fit
        raise ModelReadError(
            f"the weights do not fit the --architecture model: {_misfit(exc)}"
        ) from None


def _misfit(exc: Exception) -> str:
    """The first layer Keras could not load and why, from its message, without the arrays it
    quotes."""
    text = str(exc)
    failed = _FAILED_OBJECT.search(text)
    if failed is None:
        return describe_error(exc)
    where = f"layer {failed[2]} ({failed[1]})"
    shapes = _SHAPES.search(text)
    if shapes is not None:
        return f"{where} has a variable of shape {shapes[1]}, the weights file {shapes[2]}"
    detail = text[failed.end() :].lstrip(">:, \n").split("\n", 1)[0]
    return f"{where}: {detail[:300]}"


def _writer_hint(path: str) -> str:
    """What to do when the file is a ``.keras`` archive tf.keras (Keras 2) wrote: Keras 3 reads
    the format but not always tf.keras's configurations; tf.keras's ``.h5`` it loads."""
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("metadata.json")
            if info.file_size > 1 << 16:
                return ""
            version = str(json.loads(archive.read(info)).get("keras_version", ""))
    except (OSError, KeyError, ValueError, AttributeError, zipfile.BadZipFile):
        return ""
    if not version.startswith("2."):
        return ""
    return (
        f"; the file was written by tf.keras {version}, whose .keras files Keras 3 does not always "
        "load: save the model with tf_keras as .h5 (model.save('model.h5')), which it does"
    )


@contextlib.contextmanager
def _named_like(path: str, suffix: str) -> Iterator[str]:
    # A legacy weights file named .weights.h5 would reach Keras 3's loader by its name.
    legacy_named_keras3 = suffix == ".h5" and path.endswith(".weights.h5")
    if path.endswith((suffix, ".hdf5") if suffix == ".h5" else suffix) and not legacy_named_keras3:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="bncheck-") as tmp:
        link = os.path.join(tmp, f"model{suffix}")
        os.symlink(os.path.abspath(path), link)
        yield link


def input_specs(model: Any) -> list[InputSpec] | None:
    """The model's declared inputs; ``None`` for a model that declares none (subclassed)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    return [
        InputSpec(
            name=str(tensor.name),
            shape=tuple(None if dim is None else int(dim) for dim in tensor.shape),
            dtype=str(np.dtype(tensor.dtype)),
        )
        for tensor in inputs
    ]


def pack_inputs(model: Any, batch: Sequence[Any]) -> Any:
    """The batch in the structure the model's call expects (a tensor, a list or a dict)."""
    from keras import tree

    structure = getattr(model, "_inputs_struct", None)
    if structure is None:
        return batch[0] if len(batch) == 1 else list(batch)
    return tree.pack_sequence_as(structure, list(batch))


def output_arrays(model: Any, outputs: Any) -> list[tuple[str, np.ndarray]]:
    from keras import tree

    flat = [np.asarray(value) for value in tree.flatten(outputs)]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(flat):
        names = [f"output_{index}" for index in range(len(flat))]
    return list(zip(names, flat, strict=True))


def batchnorm_layers(model: Any) -> list[tuple[str, Any]]:
    """Every BatchNormalization layer with its nested path, as the static report names it."""
    return [(path, layer) for path, layer, _ in layer_paths.batchnorm_layers(model)]


@contextlib.contextmanager
def batchnorm_hooks(
    layers: Sequence[tuple[str, Any]], force_training: bool, observe: CallObserver
) -> Iterator[None]:
    """Wrap each layer's ``call`` for the duration of the block.

    With ``force_training`` the layers normalise with batch statistics even though the model is
    called in inference mode, so every other layer keeps its inference behaviour.
    """
    wrapped = []
    try:
        for path, layer in layers:
            original = layer.call

            def hooked(
                inputs: Any,
                *args: Any,
                _original: Any = original,
                _path: str = path,
                _layer: Any = layer,
                **kwargs: Any,
            ) -> Any:
                if force_training:
                    if args:
                        args = (True, *args[1:])
                    else:
                        kwargs["training"] = True
                outputs = _original(inputs, *args, **kwargs)
                observe(_path, _layer, inputs, outputs)
                return outputs

            layer.call = hooked
            wrapped.append(layer)
        yield
    finally:
        for layer in wrapped:
            del layer.call


def reduction_axes(layer: Any, rank: int) -> list[int]:
    """The axes a BatchNorm layer averages over: all but its channel axis."""
    axis = layer.axis % rank
    return [index for index in range(rank) if index != axis]


@record
class CallFigures:
    """What one call of a BatchNorm layer did, reduced to a few numbers per channel."""

    spread: float
    """Relative spread of the output across the batch (see ``OutputMeasurement``)."""
    rms: float
    nonfinite: int
    input_mean: np.ndarray | None
    """Per-channel mean of the input; measured in training mode only (``None`` otherwise)."""
    input_variance: np.ndarray | None
    """Per-channel variance of the input, like ``input_mean``."""
    moving_stats_error: float | None
    """How far the output is from the moving statistics' normalisation, relative to the output;
    measured in inference mode only (``None`` otherwise)."""


def call_figures(layer: Any, inputs: Any, outputs: Any, inference: bool) -> CallFigures:
    """Reduce one call's input and output with TensorFlow (multi-threaded, in float32) so that
    only a few numbers per channel leave the graph, in one transfer. Inference mode compares the
    output with the moving statistics' normalisation; training mode measures the input's
    per-channel statistics."""
    import tensorflow as tf

    values = tf.cast(inputs, tf.float32)
    out = tf.cast(outputs, tf.float32)
    finite = tf.math.is_finite(out)
    nonfinite = int(tf.size(out)) - int(tf.math.count_nonzero(finite))
    if nonfinite:
        out = tf.where(finite, out, tf.zeros_like(out))
    flat = tf.reshape(out, [out.shape[0], -1])
    scalars = [
        tf.sqrt(tf.reduce_mean(tf.square(flat))),
        tf.reduce_mean(tf.math.reduce_std(flat, 0)),
    ]
    if inference:
        expected = normalise_with_moving_stats(layer, values)
        scalars += [tf.norm(out), tf.norm(out - expected)]
        mean = variance = None
    else:
        mean, variance = tf.nn.moments(values, axes=reduction_axes(layer, len(values.shape)))
    rms, deviation, *norms = (float(value) for value in tf.stack(scalars).numpy())
    spread = deviation / rms if out.shape[0] >= 2 and rms > 0.0 else 0.0
    error = None
    if norms:
        scale, difference = norms
        error = difference / scale if scale > 0.0 else (0.0 if difference == 0.0 else np.inf)
    return CallFigures(
        spread=spread,
        rms=rms,
        nonfinite=nonfinite,
        input_mean=None if mean is None else np.asarray(mean.numpy(), dtype=np.float64),
        input_variance=None if variance is None else np.asarray(variance.numpy(), np.float64),
        moving_stats_error=error,
    )


def normalise_with_moving_stats(layer: Any, values: Any) -> Any:
    """What an inference-mode BatchNorm layer outputs for ``values`` (a float32 tensor): the
    moving statistics' normalisation, then gamma and beta."""
    import tensorflow as tf

    shape = [1] * len(values.shape)
    shape[layer.axis % len(values.shape)] = -1

    def channel(variable: Any) -> Any:
        return tf.reshape(tf.cast(variable.value, tf.float32), shape)

    scale = tf.math.rsqrt(channel(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        scale = scale * channel(layer.gamma)
    normalised = (values - channel(layer.moving_mean)) * scale
    return normalised + channel(layer.beta) if layer.center else normalised


class Snapshot:
    """Every variable's value, to put back after running the model in training mode."""

    def __init__(self, variables: Sequence[Any]) -> None:
        self._variables = list(variables)
        self._values = [np.array(variable.numpy(), copy=True) for variable in self._variables]

    def restore(self) -> None:
        for variable, value in zip(self._variables, self._values, strict=True):
            variable.assign(value)
