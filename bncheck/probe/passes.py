"""Compiled forward passes that watch every BatchNorm layer: the probe's and recalibration's
engine.

While ``Passes`` is entered, each BatchNorm layer's ``call`` is wrapped, wherever the layer sits
(nested models, wrappers, custom layers). The wrapper does what the pass asks of the layer and
records a few figures per call, which leave the compiled graph as small tensors:

- ``training``: BatchNorm normalises each batch with that batch's own statistics (every other
  layer, Dropout included, stays in inference mode), and the per-channel mean and biased variance
  of each layer's input are recorded: the statistics ``bncheck recalibrate`` averages;
- ``stored``: the model in inference mode as it is, each layer's output figures recorded, with how
  far the output is from normalising with the moving statistics (a layer hard-wired to batch
  statistics is far from it);
- ``estimated``: inference mode with some layers' statistics replaced by estimates, computed
  exactly as Keras's own inference arithmetic (``keras.ops.batch_normalization`` in the layer's
  compute dtype) without touching the layer's variables.

Training mode makes Keras update the moving statistics in memory: ``Passes`` snapshots every
variable on entry and restores them on exit, so nothing it measures is changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bncheck.probe import keras_model

STORED = "stored"
TRAINING = "training"
ESTIMATED = "estimated"

#: Figures of one call's output: root mean square, mean standard deviation across the batch,
#: non-finite values, and (stored mode) the distance from the moving statistics' normalisation.
_FIGURES = ("rms", "deviation", "nonfinite", "error")


@dataclass(frozen=True)
class CallFigures:
    """What one call of a BatchNorm layer did to one batch."""

    path: str
    spread: float
    """Relative spread of the output across the batch (see ``OutputMeasurement``)."""
    rms: float
    nonfinite: int
    moving_stats_error: float | None
    """Stored mode only: ``|output - moving-statistics normalisation| / |output|``."""


@dataclass(frozen=True)
class Moments:
    """One call's per-channel input statistics in training mode."""

    path: str
    mean: np.ndarray
    variance: np.ndarray
    """The biased variance the layer normalised the batch with."""
    samples: int
    values: int
    """Values per channel the statistics are taken over (samples times positions)."""

    @property
    def unbiased_variance(self) -> np.ndarray:
        """The variance with Bessel's correction: its average over batches estimates the
        population variance whatever the batch size."""
        return self.variance * (self.values / max(self.values - 1, 1))


@dataclass(frozen=True)
class PassResult:
    """One model call: its outputs and what each BatchNorm call recorded."""

    outputs: list[tuple[str, np.ndarray]]
    figures: list[CallFigures]
    moments: list[Moments]


Statistics = Mapping[str, tuple[np.ndarray, np.ndarray]]


class Passes:
    """The compiled passes over one loaded Keras model and its BatchNorm layers."""

    def __init__(
        self, model: Any, layers: Sequence[tuple[str, Any]], force: Iterable[str] = ()
    ) -> None:
        """``force``: paths of frozen layers to run with batch statistics in training mode all
        the same (to re-estimate them)."""
        self.model = model
        self.layers = list(layers)
        self._force = frozenset(force)
        self._dirty = False
        self._mode = STORED
        self._estimates: dict[str, tuple[Any, Any]] = {}
        self._graph: Any = None
        self._records: list[tuple[str, str, list[Any]]] = []
        self._functions: dict[tuple[str, ...], Any] = {}
        self._keys: dict[tuple[str, ...], list[list[tuple[str, str, list[int]]]]] = {}

    def __enter__(self) -> Passes:
        self._snapshot = keras_model.Snapshot(self.model.variables)
        self._unhook = _hook(self.layers, self._call)
        return self

    def __exit__(self, *exc: object) -> None:
        self._unhook()
        self._snapshot.restore()

    def use_estimates(self, statistics: Statistics) -> None:
        """The statistics ``estimated`` passes use, by layer path; other layers keep theirs."""
        import tensorflow as tf

        self._estimates = {
            path: (tf.constant(mean, tf.float32), tf.constant(variance, tf.float32))
            for path, (mean, variance) in statistics.items()
        }
        # Estimates are constants of the compiled graph: trace anew with the new ones.
        self._functions = {key: fn for key, fn in self._functions.items() if ESTIMATED not in key}

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        """Call the model once per mode on the same inputs, in one compiled function."""
        import tensorflow as tf

        function = self._functions.get(modes)
        if function is None:
            # Any batch size, one trace: a short batch or half a batch runs the same graph.
            signature = [
                tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))
                for array in inputs
            ]
            function = self._functions[modes] = self._compile(modes, signature)
        results = function(*[tf.constant(array) for array in inputs])
        if self._dirty:
            self._snapshot.restore()
        keys = self._keys[modes]
        return [
            _pass_result(self.model, outputs, np.asarray(figures), call_keys)
            for (outputs, figures), call_keys in zip(results, keys, strict=True)
        ]

    def _compile(self, modes: tuple[str, ...], signature: list[Any]) -> Any:
        import tensorflow as tf

        # No autograph: the passes are plain Python over Keras calls, which need no conversion.
        @tf.function(input_signature=signature, autograph=False)
        def passes(*inputs: Any) -> list[tuple[Any, Any]]:
            self._graph = tf.compat.v1.get_default_graph()
            results, keys = [], []
            for mode in modes:
                self._mode, self._records = mode, []
                outputs = self.model(keras_model.pack_inputs(self.model, list(inputs)))
                # Every recorded figure of the call in one flat vector: one transfer per call.
                pieces = [
                    tf.reshape(tf.cast(tensor, tf.float32), [-1])
                    for _, _, tensors in self._records
                    for tensor in tensors
                ]
                keys.append(
                    [
                        (path, kind, [_size(tensor) for tensor in tensors])
                        for path, kind, tensors in self._records
                    ]
                )
                flat = tf.concat(pieces, 0) if pieces else tf.zeros([0])
                results.append((outputs, flat))
            self._keys[modes] = keys
            self._mode = STORED
            return results

        return passes

    def _call(
        self,
        path: str,
        layer: Any,
        original: Callable[..., Any],
        inputs: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The wrapped ``call`` of one BatchNorm layer, traced once per pass."""
        import tensorflow as tf

        explicit = kwargs.get("training", args[0] if args else None)
        observable = tf.compat.v1.get_default_graph() is self._graph
        if self._mode == TRAINING:
            batch_mode = bool(layer.trainable) or path in self._force
            if batch_mode and not getattr(layer, "renorm", False):
                outputs, mean, variance = _normalise_with_batch(layer, inputs, kwargs.get("mask"))
            else:
                # Renormalisation corrects batch statistics with state of its own: let Keras do
                # it (it updates variables the snapshot restores). A frozen layer stays in
                # inference mode, as in Keras's training mode; its input is measured all the same.
                self._dirty = self._dirty or batch_mode
                if args:
                    args = (True, *args[1:])
                else:
                    kwargs["training"] = True
                outputs = original(inputs, *args, **kwargs)
                values = tf.cast(inputs, tf.float32)
                mean, variance = tf.nn.moments(values, axes=_axes(layer, values))
            if observable:
                shape = tf.shape(inputs)
                per_channel = tf.reduce_prod(tf.gather(shape, _axes(layer, inputs)))
                self._records.append((path, "moments", [mean, variance, shape[0], per_channel]))
                self._records.append((path, "figures", _figures(outputs)))
            return outputs
        if self._mode == ESTIMATED and path in self._estimates and explicit is not True:
            return _normalise(layer, inputs, *self._estimates[path])
        outputs = original(inputs, *args, **kwargs)
        if observable and self._mode == STORED:
            expected = keras_model.normalise_with_moving_stats(layer, tf.cast(inputs, tf.float32))
            self._records.append((path, "figures", _figures(outputs, expected)))
        return outputs


def _hook(layers: Sequence[tuple[str, Any]], call: Callable[..., Any]) -> Callable[[], None]:
    """Wrap each layer's ``call``; the returned function puts them back."""
    wrapped = []
    for path, layer in layers:

        def hooked(
            inputs: Any,
            *args: Any,
            _original: Any = layer.call,
            _path: str = path,
            _layer: Any = layer,
            **kwargs: Any,
        ) -> Any:
            return call(_path, _layer, _original, inputs, args, kwargs)

        layer.call = hooked
        wrapped.append(layer)

    def unhook() -> None:
        for layer in wrapped:
            del layer.call

    return unhook


def _axes(layer: Any, values: Any) -> list[int]:
    return keras_model.reduction_axes(layer, len(values.shape))


def _figures(outputs: Any, expected: Any = None) -> list[Any]:
    import tensorflow as tf

    out = tf.cast(outputs, tf.float32)
    finite = tf.math.is_finite(out)
    nonfinite = tf.cast(tf.size(out), tf.float32) - tf.cast(
        tf.math.count_nonzero(finite), tf.float32
    )
    out = tf.where(finite, out, tf.zeros_like(out))
    flat = tf.reshape(out, [tf.shape(out)[0], -1])
    rms = tf.sqrt(tf.reduce_mean(tf.square(flat)))
    deviation = tf.reduce_mean(tf.math.reduce_std(flat, 0))
    if expected is None:
        error = tf.constant(-1.0)
    else:
        scale = tf.norm(out)
        difference = tf.norm(out - expected)
        error = tf.where(
            scale > 0,
            tf.math.divide_no_nan(difference, scale),
            tf.where(difference > 0, tf.constant(np.inf), tf.constant(0.0)),
        )
    return [tf.stack([rms, deviation, nonfinite, error]), tf.shape(out)[0]]


def _normalise_with_batch(layer: Any, inputs: Any, mask: Any) -> tuple[Any, Any, Any]:
    """Keras 3 ``BatchNormalization.call`` in training mode without updating the moving
    statistics: the output, and the batch mean and variance it normalised with."""
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    values = ops.cast(inputs, compute_dtype)
    mean, variance = layer._moments(values, mask)
    outputs = _batch_normalization(layer, values, mean, variance)
    return ops.cast(outputs, layer.compute_dtype), mean, variance


def _normalise(layer: Any, inputs: Any, mean: Any, variance: Any) -> Any:
    """Keras 3 ``BatchNormalization.call`` in inference mode, with other statistics."""
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    values = ops.cast(inputs, compute_dtype)
    outputs = _batch_normalization(
        layer, values, ops.cast(mean, values.dtype), ops.cast(variance, values.dtype)
    )
    return ops.cast(outputs, layer.compute_dtype)


def _batch_normalization(layer: Any, values: Any, mean: Any, variance: Any) -> Any:
    from keras import ops

    return ops.batch_normalization(
        x=values,
        mean=mean,
        variance=variance,
        axis=layer.axis,
        offset=ops.cast(layer.beta, values.dtype) if layer.center else None,
        scale=ops.cast(layer.gamma, values.dtype) if layer.scale else None,
        epsilon=layer.epsilon,
    )


def _size(tensor: Any) -> int:
    """Values in a recorded tensor, known when the pass is traced (channels are static)."""
    size = tensor.shape.num_elements()
    if size is None:
        raise ValueError(f"a recorded figure has no static size: {tensor.shape}")
    return int(size)


def _pass_result(
    model: Any, outputs: Any, flat: np.ndarray, keys: list[tuple[str, str, list[int]]]
) -> PassResult:
    figures, moments = [], []
    offset = 0
    for path, kind, sizes in keys:
        values = []
        for size in sizes:
            values.append(flat[offset : offset + size])
            offset += size
        if kind == "moments":
            mean, variance, samples, per_channel = values
            moments.append(
                Moments(
                    path,
                    mean.astype(np.float64),
                    variance.astype(np.float64),
                    int(samples[0]),
                    int(per_channel[0]),
                )
            )
            continue
        stacked, batch = values
        rms, deviation, nonfinite, error = (float(v) for v in stacked)
        spread = deviation / rms if int(batch[0]) >= 2 and rms > 0.0 else 0.0
        figures.append(CallFigures(path, spread, rms, int(nonfinite), None if error < 0 else error))
    return PassResult(keras_model.output_arrays(model, outputs), figures, moments)
