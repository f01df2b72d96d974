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

Under a ``tf.distribute`` strategy (``sweep``), each global batch is split across the replicas
and every BatchNorm layer in ``training`` mode normalises with the moments of the whole global
batch: each replica's count, sum and sum of squares per channel, in float64, summed by one
all-reduce per layer and call (``_across_replicas``). The activations, and so the moments every
layer records, are then those of the same batch on one device; figures of the outputs are not
recorded there (each replica would see only its share).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe.data import Batch
from bncheck.probe.runtime import (
    ESTIMATED,
    STORED,
    TRAINING,
    CallFigures,
    Moments,
    PassResult,
    Statistics,
)
from bncheck.probe.runtimes import keras_model
from bncheck.records import record

#: Figures of one call's output: root mean square, mean standard deviation across the batch,
#: non-finite values, and (stored mode) the distance from the moving statistics' normalisation.
_FIGURES = ("rms", "deviation", "nonfinite", "error")


@record
class Step:
    """One batch through ``Passes.sweep``: its size, its labels, each mode's result."""

    size: int
    labels: np.ndarray | None
    results: list[PassResult]


class Passes:
    """The compiled passes over one loaded Keras model and its BatchNorm layers."""

    def __init__(
        self,
        model: Any,
        layers: Sequence[tuple[str, Any]],
        force: Iterable[str] = (),
        strategy: Any = None,
        figures: bool = True,
    ) -> None:
        """``force``: paths of frozen layers to run with batch statistics in training mode all
        the same (to re-estimate them). ``strategy``: the ``tf.distribute.Strategy`` that
        ``sweep`` splits batches with, under whose scope ``model`` was loaded. ``figures``:
        record each call's output figures, which the probe judges and recalibration does not
        need (they cost a pass over every BatchNorm output); never under a strategy."""
        self.model = model
        self.layers = list(layers)
        self._force = frozenset(force)
        self._strategy = strategy
        self._figures = figures and strategy is None
        if strategy is not None:
            renormalised = [path for path, layer in self.layers if getattr(layer, "renorm", False)]
            if renormalised:
                raise UsageError(
                    f"{renormalised[0]} renormalises its batch statistics (renorm=True), which "
                    "bncheck cannot synchronise across replicas: run it on one device"
                )
        self._dirty = False
        self._estimates: dict[str, tuple[Any, Any]] = {}
        self._graph: Any = None
        # Each replica traces the model in its own thread: the mode and records are its own.
        self._local = threading.local()
        self._functions: dict[tuple[str, ...], Any] = {}
        self._distributed: dict[tuple[tuple[str, ...], bool, bool], Any] = {}
        self._keys: dict[tuple[str, ...], list[list[tuple[str, str, list[int]]]]] = {}
        # Whether a stored pass compares each layer's output with normalising by its moving
        # statistics: a property of the layer, not of the data, so the first batch tells.
        self._compare: Any = None

    def __enter__(self) -> Passes:
        import tensorflow as tf

        self._snapshot = keras_model.Snapshot(self.model.variables)
        if self._strategy is None:
            # Calls inside a loop (a recurrent cell's BatchNorm) leave no tensor outside it: their
            # moments are summed in a variable per layer, read and reset after each pass.
            self._loop_sums = {
                path: tf.Variable(
                    tf.zeros([_LOOP_HEADER + 2 * int(layer.moving_mean.shape[0])], tf.float64),
                    trainable=False,
                )
                for path, layer in self.layers
            }
        if self._figures:
            self._compare = tf.Variable(True, trainable=False)
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
        self._distributed = {
            key: fn for key, fn in self._distributed.items() if ESTIMATED not in key[0]
        }

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        """Call the model once per mode on the same inputs, in one compiled function."""
        import tensorflow as tf

        function = self._functions.get(modes)
        if function is None:
            # Any batch size, one trace: a short batch or half a batch runs the same graph.
            signature = [_spec(array) for array in inputs]
            function = self._functions[modes] = self._compile(modes, signature)
        results = function(*[tf.constant(array) for array in inputs])
        if self._dirty:
            self._snapshot.restore()
        if STORED in modes and self._compare is not None:
            self._compare.assign(False)
        keys = self._keys[modes]
        return [
            _pass_result(self.model, outputs, np.asarray(figures), call_keys)
            for (outputs, figures), call_keys in zip(results, keys, strict=True)
        ]

    def sweep(self, batches: Iterable[Batch], *modes: str, outputs: bool = True) -> Iterator[Step]:
        """Run ``modes`` on each batch: here, or with the strategy, each batch split across
        its replicas (``outputs``: bring the model's outputs and the labels back from them)."""
        if self._strategy is None:
            for batch in batches:
                yield Step(batch.size, batch.labels, self.run(batch.inputs, *modes))
            return
        yield from self._sweep_replicas(iter(batches), modes, outputs)

    def _sweep_replicas(
        self, batches: Iterator[Batch], modes: tuple[str, ...], outputs: bool
    ) -> Iterator[Step]:
        """Each batch is a global batch, which ``experimental_distribute_dataset`` splits in
        order into one consecutive share per replica. Across workers (multi-worker), every
        worker reads the same batches and keeps its replicas' shares (auto-shard policy
        ``DATA``), so the global batches are those of one device."""
        import tensorflow as tf

        first = next(batches, None)
        if first is None:
            return
        labelled = outputs and first.labels is not None

        def elements() -> Iterator[tuple[Any, ...]]:
            for batch in itertools.chain([first], batches):
                inputs = tuple(batch.inputs)
                yield (inputs, batch.labels) if labelled else (inputs,)

        signature: tuple[Any, ...] = (tuple(_spec(array) for array in first.inputs),)
        if labelled:
            assert first.labels is not None
            signature += (_spec(first.labels),)
        dataset = tf.data.Dataset.from_generator(elements, output_signature=signature)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        distributed = self._strategy.experimental_distribute_dataset(
            dataset.with_options(options).prefetch(tf.data.AUTOTUNE)
        )
        key = (modes, labelled, outputs)
        function = self._distributed.get(key)
        if function is None:
            function = self._distributed[key] = self._compile_replicas(modes, outputs)
        for element in distributed:
            results, size, labels = function(element)
            if self._dirty:
                self._snapshot.restore()
            yield Step(
                int(size),
                None if labels is None else np.asarray(labels),
                [
                    _pass_result(self.model, replica_outputs, np.asarray(flat), call_keys)
                    for (replica_outputs, flat), call_keys in zip(
                        results, self._keys[modes], strict=True
                    )
                ],
            )

    def _compile(self, modes: tuple[str, ...], signature: list[Any]) -> Any:
        import tensorflow as tf

        # No autograph: the passes are plain Python over Keras calls, which need no conversion.
        @tf.function(input_signature=signature, autograph=False)
        def passes(*inputs: Any) -> list[tuple[Any, Any]]:
            self._graph = tf.compat.v1.get_default_graph()
            return self._traced(modes, list(inputs))

        return passes

    def _compile_replicas(self, modes: tuple[str, ...], outputs: bool) -> Any:
        import tensorflow as tf

        strategy = self._strategy

        def replica(*inputs: Any) -> tuple[list[tuple[Any, Any]], Any]:
            return self._traced(modes, list(inputs)), tf.shape(inputs[0])[0]

        def gathered(values: Any) -> Any:
            return tf.nest.map_structure(lambda value: strategy.gather(value, 0), values)

        @tf.function(autograph=False)
        def passes(element: tuple[Any, ...]) -> tuple[list[tuple[Any, Any]], Any, Any]:
            self._graph = tf.compat.v1.get_default_graph()
            per_replica, sizes = strategy.run(replica, args=tuple(element[0]))
            # The moments are the same on every replica: any replica's flat vector will do.
            results = [
                (gathered(values) if outputs else [], strategy.experimental_local_results(flat)[0])
                for values, flat in per_replica
            ]
            size = strategy.reduce(tf.distribute.ReduceOp.SUM, sizes, axis=None)
            labels = gathered(element[1]) if len(element) > 1 else None
            return results, size, labels

        return passes

    def _traced(self, modes: tuple[str, ...], inputs: list[Any]) -> list[tuple[Any, Any]]:
        """Call the model once per mode: its outputs, and what its BatchNorm calls recorded."""
        import tensorflow as tf

        results, keys = [], []
        local = self._local
        for mode in modes:
            local.mode, local.records, local.looped = mode, [], {}
            # As ``model.predict`` and ``fit``'s BatchNorm see it: ``training=False`` reaches
            # every layer (augmentation, Dropout, noise and custom layers that default to
            # ``training=True`` are off); in training mode the hooked BatchNorm layers alone
            # normalise with batch statistics.
            outputs = self.model(keras_model.pack_inputs(self.model, inputs), training=False)
            if local.looped:
                # A layer called in a loop is measured over the loop's calls alone: its call
                # outside it, if any, is Keras tracing the first step for its output's shape.
                local.records = [
                    record
                    for record in local.records
                    if record[0] not in local.looped or record[1] != "moments"
                ]
                for path in local.looped:
                    sums = self._loop_sums[path].read_value()
                    local.records.append((path, "moments", _loop_moments(sums)))
                    with tf.control_dependencies([sums]):
                        self._loop_sums[path].assign(tf.zeros_like(sums))
            # Every recorded figure of the call in one flat vector: one transfer per call.
            pieces = [
                tf.reshape(tf.cast(tensor, tf.float32), [-1])
                for _, _, tensors in local.records
                for tensor in tensors
            ]
            keys.append(
                [
                    (path, kind, [_size(tensor) for tensor in tensors])
                    for path, kind, tensors in local.records
                ]
            )
            flat = tf.concat(pieces, 0) if pieces else tf.zeros([0])
            results.append((outputs, flat))
        self._keys[modes] = keys
        local.mode = STORED
        return results

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
        mode = getattr(self._local, "mode", STORED)
        records = getattr(self._local, "records", [])
        synchronised = self._strategy is not None
        if mode == TRAINING:
            batch_mode = bool(layer.trainable) or path in self._force
            if batch_mode and not getattr(layer, "renorm", False):
                outputs, moments = _normalise_with_batch(
                    layer, inputs, kwargs.get("mask"), synchronised
                )
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
                moments = _counted(layer, values, mean, variance, None, synchronised)
            if observable:
                records.append((path, "moments", list(moments)))
                if self._figures:
                    records.append((path, "figures", _figures(outputs)))
            elif not synchronised:
                self._local.looped[path] = True
                self._loop_sums[path].assign_add(_loop_terms(*moments))
            return outputs
        if mode == ESTIMATED and path in self._estimates and explicit is not True:
            return _normalise(layer, inputs, *self._estimates[path])
        # A layer its caller hard-wires to ``training=True`` updates its moving statistics, in
        # ``model.predict`` as here: the snapshot puts them back after the pass.
        self._dirty = self._dirty or (explicit is True and bool(layer.trainable))
        outputs = original(inputs, *args, **kwargs)
        if observable and mode == STORED and self._figures:
            values = tf.cast(inputs, tf.float32)
            expected = lambda: keras_model.normalise_with_moving_stats(layer, values)  # noqa: E731
            records.append((path, "figures", _figures(outputs, expected, self._compare)))
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


def _figures(
    outputs: Any, expected: Callable[[], Any] | None = None, compare: Any = None
) -> list[Any]:
    """A call's output figures: root mean square, spread across samples, non-finite values and,
    where ``compare`` holds, the relative difference from ``expected()`` (-1: not measured)."""
    import tensorflow as tf

    out = tf.cast(outputs, tf.float32)
    flat = tf.reshape(out, [tf.shape(out)[0], -1])
    squares = tf.reduce_sum(tf.square(flat))

    def finite() -> tuple[Any, Any, Any]:
        return flat, squares, tf.constant(0.0)

    def cleaned() -> tuple[Any, Any, Any]:
        # Only where the sum of squares is not finite: counting and masking every value of every
        # batch would cost more than the layer's own call.
        mask = tf.math.is_finite(flat)
        count = tf.cast(tf.size(flat), tf.float32) - tf.cast(
            tf.math.count_nonzero(mask), tf.float32
        )
        zeroed = tf.where(mask, flat, tf.zeros_like(flat))
        return zeroed, tf.reduce_sum(tf.square(zeroed)), count

    flat, squares, nonfinite = tf.cond(tf.math.is_finite(squares), finite, cleaned)
    rms = tf.sqrt(squares / tf.cast(tf.maximum(tf.size(flat), 1), tf.float32))
    deviation = tf.reduce_mean(tf.math.reduce_std(flat, 0))
    unmeasured = tf.constant(-1.0)
    if expected is None:
        error = unmeasured
    else:

        def measured() -> Any:
            scale = tf.sqrt(squares)
            reference = tf.reshape(tf.cast(expected(), tf.float32), tf.shape(flat))
            difference = tf.norm(flat - reference)
            return tf.where(
                scale > 0,
                tf.math.divide_no_nan(difference, scale),
                tf.where(difference > 0, tf.constant(np.inf), tf.constant(0.0)),
            )

        error = tf.cond(compare, measured, lambda: unmeasured)
    return [tf.stack([rms, deviation, nonfinite, error]), tf.shape(out)[0]]


#: A call's moments as recorded: per-channel mean and biased variance, the samples and the
#: values per channel they are taken over.
CountedMoments = tuple[Any, Any, Any, Any]


def _normalise_with_batch(
    layer: Any, inputs: Any, mask: Any, synchronised: bool
) -> tuple[Any, CountedMoments]:
    """Keras 3 ``BatchNormalization.call`` in training mode without updating the moving
    statistics: the output, and the batch moments it normalised with (``synchronised``: the
    whole global batch's, across replicas)."""
    import tensorflow as tf
    from keras import backend, ops

    compute_dtype = backend.result_type(inputs.dtype, "float32")
    values = ops.cast(inputs, compute_dtype)
    if synchronised and mask is None:
        # This replica's own moments (a layer's ``synchronized`` option would sum them in
        # float32 already): they are combined in float64 below.
        mean, variance = tf.nn.moments(values, axes=_axes(layer, values))
    else:
        mean, variance = layer._moments(values, mask)
    moments = _counted(layer, values, mean, variance, mask, synchronised)
    outputs = _batch_normalization(layer, values, moments[0], moments[1])
    return ops.cast(outputs, layer.compute_dtype), moments


def _counted(
    layer: Any, values: Any, mean: Any, variance: Any, mask: Any, synchronised: bool
) -> CountedMoments:
    """The moments with their counts; ``synchronised``: those of the whole global batch."""
    import tensorflow as tf

    shape = tf.shape(values)
    per_channel = tf.reduce_prod(tf.gather(shape, _axes(layer, values)))
    # Masked moments are taken over the unmasked positions only: that is their weight.
    weight = per_channel if mask is None else tf.reduce_sum(tf.cast(mask, tf.int32))
    if not synchronised:
        return mean, variance, shape[0], weight
    return _across_replicas(mean, variance, weight, shape[0])


#: A loop sum's leading values: the values per channel, the calls and the samples summed over
#: them; then each channel's sum and sum of squares.
_LOOP_HEADER = 3


def _loop_terms(mean: Any, variance: Any, samples: Any, per_channel: Any) -> Any:
    """One call's terms of a loop sum, in float64."""
    import tensorflow as tf

    count = tf.cast(per_channel, tf.float64)
    mean = tf.cast(tf.reshape(mean, [-1]), tf.float64)
    variance = tf.cast(tf.reshape(variance, [-1]), tf.float64)
    header = tf.stack([count, tf.constant(1.0, tf.float64), tf.cast(samples, tf.float64)])
    return tf.concat([header, count * mean, count * (variance + mean**2)], 0)


def _loop_moments(sums: Any) -> list[Any]:
    """A loop sum's moments, as one call records them (taken in float64)."""
    import tensorflow as tf

    count, calls, samples = tf.unstack(sums[:_LOOP_HEADER])
    channels = (sums.shape[0] - _LOOP_HEADER) // 2
    mean = tf.math.divide_no_nan(sums[_LOOP_HEADER : _LOOP_HEADER + channels], count)
    squares = tf.math.divide_no_nan(sums[_LOOP_HEADER + channels :], count)
    variance = tf.maximum(squares - mean**2, 0.0)
    return [
        tf.cast(mean, tf.float32),
        tf.cast(variance, tf.float32),
        tf.cast(tf.round(tf.math.divide_no_nan(samples, calls)), tf.int32),
        tf.cast(count, tf.int32),
    ]


def _across_replicas(mean: Any, variance: Any, weight: Any, samples: Any) -> CountedMoments:
    """The global batch's moments from each replica's: the per-channel count, sum and sum of
    squares (``weight * mean`` and ``weight * (variance + mean**2)``), in float64, summed across
    replicas by one all-reduce. A replica's float32 moments and their products with a count are
    exact in float64, so the global moments are as precise as one device's float32 ones; a
    replica with no rows (an uneven split of a short last batch) adds zeros."""
    import tensorflow as tf

    def wide(value: Any) -> Any:
        return tf.cast(tf.reshape(value, [-1]), tf.float64)

    count = tf.cast(weight, tf.float64)
    local_mean, local_variance = wide(mean), wide(variance)
    channels = tf.size(local_mean)
    sums = tf.concat(
        [
            tf.stack([count, tf.cast(samples, tf.float64)]),
            tf.where(count > 0, count * local_mean, 0.0),
            tf.where(count > 0, count * (local_variance + local_mean**2), 0.0),
        ],
        0,
    )
    total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, sums)
    global_mean = total[2 : 2 + channels] / total[0]
    global_variance = tf.maximum(total[2 + channels :] / total[0] - global_mean**2, 0.0)
    return (
        tf.reshape(tf.cast(global_mean, mean.dtype), tf.shape(mean)),
        tf.reshape(tf.cast(global_variance, variance.dtype), tf.shape(variance)),
        tf.cast(total[1], tf.int32),
        tf.cast(total[0], tf.int32),
    )


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


def _spec(array: np.ndarray) -> Any:
    """Any number of rows of ``array``'s kind."""
    import tensorflow as tf

    return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))


def _size(tensor: Any) -> int:
    """Values in a recorded tensor, known when the pass is traced (channels are static)."""
    size = tensor.shape.num_elements()
    if size is None:
        raise ValueError(f"a recorded figure has no static size: {tensor.shape}")
    return int(size)


def _pass_result(
    model: Any, outputs: Any, flat: np.ndarray, keys: list[tuple[str, str, list[int]]]
) -> PassResult:
    figures, calls = [], []
    offset = 0
    for path, kind, sizes in keys:
        values = []
        for size in sizes:
            values.append(flat[offset : offset + size])
            offset += size
        if kind == "moments":
            mean, variance, samples, per_channel = values
            calls.append(
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
    return PassResult(keras_model.output_arrays(model, outputs), figures, _pooled(calls))


def _pooled(calls: list[Moments]) -> list[Moments]:
    """One ``Moments`` per layer and pass: a layer called several times in one pass (inside
    ``TimeDistributed``, which calls it once per timestep, or by a custom layer, on several
    tensors) is measured over everything it normalised in the pass, its calls' moments
    weighted by their values, so its population statistics are those of every position it
    normalises at inference (the variance pooled over batch and time, not the per-timestep
    variance averaged over time)."""
    by_path: dict[str, list[Moments]] = {}
    for moments in calls:
        by_path.setdefault(moments.path, []).append(moments)
    pooled = []
    for path, group in by_path.items():
        if len(group) == 1:
            pooled.append(group[0])
            continue
        weights = np.array([moments.values for moments in group], dtype=np.float64)
        total = max(float(weights.sum()), 1.0)
        mean = sum(w * m.mean for w, m in zip(weights, group, strict=True)) / total
        variance = (
            sum(
                w * (m.variance + (m.mean - mean) ** 2) for w, m in zip(weights, group, strict=True)
            )
            / total
        )
        samples = max(moments.samples for moments in group)
        pooled.append(Moments(path, mean, variance, samples, int(weights.sum())))
    return pooled
