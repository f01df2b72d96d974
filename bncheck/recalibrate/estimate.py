"""Precise BatchNorm: each layer's population statistics as an exact average over the data.

One compiled pass per batch runs the model with the layers being recalibrated in training mode
(they normalise with the batch's own statistics, as during training) and every other layer in
inference mode: Dropout and noise layers are off, and frozen BatchNorm layers that keep their
statistics use them, as in the final model. Each recalibrated layer's per-batch mean and
(biased) variance of its input are recorded, and the new moving statistics are their averages
over all batches, weighted by batch size. The momentum plays no part, so nothing lags: every
statistic describes the activations the final weights produce.

Why training mode upstream, and not each layer measured in inference mode after the layers
before it were fixed: the moving averages Keras keeps are estimates of exactly these averages of
batch statistics, which is also what the layer's gamma and beta were trained against; this is the
reference method (precise BN, fvcore; ``torch.optim.swa_utils.update_bn``); and it needs one pass
over the data, where the layer-by-layer scheme needs one pass per level of BatchNorm depth
(52 for MobileNetV2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.probe import keras_model

#: Told after each batch how many batches are done.
BatchReporter = Callable[[int], None]


@dataclass
class _Sums:
    """Batch-size-weighted sums of one layer's per-batch statistics."""

    mean: np.ndarray | float = 0.0
    variance: np.ndarray | float = 0.0
    samples: int = 0


@dataclass(frozen=True)
class Estimate:
    """New statistics for the layers recalibrated, and how much data they rest on."""

    moving_mean: dict[str, np.ndarray]
    moving_variance: dict[str, np.ndarray]
    batches: int
    samples: int
    unmeasured: tuple[str, ...] = field(default_factory=tuple)
    """Layers that never ran (or ran where they cannot be observed): left unchanged."""


def estimate(
    model: Any,
    targets: Sequence[tuple[str, Any]],
    batches: Iterable[Sequence[np.ndarray]],
    done: BatchReporter,
) -> Estimate:
    """Average each target layer's batch statistics over ``batches``. The model's variables are
    the same afterwards as before."""
    import tensorflow as tf

    recorded: list[tuple[str, Any, Any]] = []

    def observe(path: str, layer: Any, inputs: Any, outputs: Any) -> None:
        values = tf.cast(inputs, tf.float32)
        axes = keras_model.reduction_axes(layer, len(values.shape))
        mean, variance = tf.nn.moments(values, axes=axes)
        recorded.append((path, mean, variance))

    @tf.function(reduce_retracing=True)
    def statistics(*inputs: Any) -> list[tuple[Any, Any]]:
        recorded.clear()
        model(keras_model.pack_inputs(model, list(inputs)))
        return [(mean, variance) for _, mean, variance in recorded]

    sums: dict[str, _Sums] = {path: _Sums() for path, _ in targets}
    count = samples = 0
    snapshot = keras_model.Snapshot(model.variables)
    try:
        with _trainable(targets), keras_model.batchnorm_hooks(targets, True, observe):
            for batch in batches:
                results = statistics(*[tf.constant(array) for array in batch])
                # The order of the calls, fixed when the function was traced.
                paths = [path for path, _, _ in recorded]
                size = len(batch[0])
                for path, (mean, variance) in zip(paths, results, strict=True):
                    total = sums[path]
                    total.mean = total.mean + size * mean.numpy().astype(np.float64)
                    total.variance = total.variance + size * variance.numpy().astype(np.float64)
                    total.samples += size
                count += 1
                samples += size
                done(count)
    finally:
        snapshot.restore()
    measured = {path: total for path, total in sums.items() if total.samples}
    return Estimate(
        moving_mean={path: np.asarray(t.mean) / t.samples for path, t in measured.items()},
        moving_variance={path: np.asarray(t.variance) / t.samples for path, t in measured.items()},
        batches=count,
        samples=samples,
        unmeasured=tuple(path for path, _ in targets if path not in measured),
    )


@contextlib.contextmanager
def _trainable(targets: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Frozen layers chosen for recalibration (``--include-frozen``) must use batch statistics
    for the pass, which Keras only lets a trainable layer do."""
    frozen = [layer for _, layer in targets if not layer.trainable]
    for layer in frozen:
        layer.trainable = True
    try:
        yield
    finally:
        for layer in frozen:
            layer.trainable = False
