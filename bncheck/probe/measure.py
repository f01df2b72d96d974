"""Run a loaded model in inference and training mode and measure what BatchNorm does.

The order is fixed and the model's state is put back afterwards:

1. inference mode on the batch, watching every BatchNorm layer's output;
2. inference mode on the first half of the batch alone (does a sample's output depend on the
   rest of its batch?);
3. training mode on the batch, watching every BatchNorm layer's input and output. For Keras
   models only the BatchNorm layers switch to training mode; Dropout and other noise layers stay
   in inference mode, so the two passes differ by normalisation alone.

Training mode updates the moving statistics in memory; every variable is snapshotted before and
restored after, so the probe changes nothing it judges.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.probe import keras_model
from bncheck.probe.results import INFERENCE, TRAINING, LayerMeasurement, OutputMeasurement
from bncheck.probe.savedmodel import SavedModelSubject

Outputs = list[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class Measured:
    """The measurements of one probe run."""

    modes: tuple[str, ...]
    outputs: tuple[OutputMeasurement, ...]
    layers: tuple[LayerMeasurement, ...] = ()
    notes: tuple[str, ...] = ()


def spread(values: np.ndarray) -> tuple[float, float, int]:
    """(relative spread across the batch, root mean square, non-finite count) of a batch."""
    flat = np.asarray(values).reshape(len(values), -1)
    finite = np.isfinite(flat)
    nonfinite = int(flat.size - np.count_nonzero(finite))
    clean = np.where(finite, flat, 0.0) if nonfinite else flat
    rms = float(np.sqrt(np.mean(np.square(clean, dtype=np.float64))))
    if len(flat) < 2 or rms == 0.0:
        return 0.0, rms, nonfinite
    deviation = float(np.mean(np.std(clean, axis=0, dtype=np.float64)))
    return deviation / rms, rms, nonfinite


def compare_outputs(
    inference: Outputs, training: Outputs | None, half: Outputs | None
) -> tuple[OutputMeasurement, ...]:
    measured = []
    for index, (name, inferred) in enumerate(inference):
        inference_spread, inference_rms, nonfinite = spread(inferred)
        entry: dict[str, Any] = {}
        if training is not None:
            trained = training[index][1]
            training_spread, training_rms, _ = spread(trained)
            entry.update(
                training_spread=training_spread,
                training_rms=training_rms,
                relative_error=_relative(trained - inferred, trained),
                top1_agreement=_top1_agreement(inferred, trained),
            )
        if half is not None:
            alone = half[index][1]
            entry["batch_dependence"] = _relative(
                alone - inferred[: len(alone)], inferred[: len(alone)]
            )
        measured.append(
            OutputMeasurement(
                name=name,
                inference_spread=inference_spread,
                inference_rms=inference_rms,
                inference_nonfinite=nonfinite,
                **entry,
            )
        )
    return tuple(measured)


def _relative(difference: np.ndarray, reference: np.ndarray) -> float:
    scale = float(np.linalg.norm(np.asarray(reference, dtype=np.float64).ravel()))
    error = float(np.linalg.norm(np.asarray(difference, dtype=np.float64).ravel()))
    if scale == 0.0:
        return 0.0 if error == 0.0 else float("inf")
    return error / scale


def _top1_agreement(inferred: np.ndarray, trained: np.ndarray) -> float | None:
    if inferred.ndim != 2 or inferred.shape[1] < 2:
        return None
    return float(np.mean(np.argmax(inferred, axis=1) == np.argmax(trained, axis=1)))


def _half(batch: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    count = len(batch[0]) // 2
    return [array[:count] for array in batch] if count >= 1 else None


@dataclass
class _LayerCalls:
    """What one pass saw of one layer, summed over its calls."""

    layer: Any
    calls: int = 0
    spread: float = 0.0
    rms: float = 0.0
    nonfinite: int = 0
    moving_stats_error: float = 0.0
    input_mean: list[np.ndarray] = field(default_factory=list)
    input_variance: list[np.ndarray] = field(default_factory=list)


class _Pass:
    """Collects per-layer figures during one forward pass (eager execution only)."""

    def __init__(self, inference: bool) -> None:
        self.inference = inference
        self.layers: dict[str, _LayerCalls] = {}

    def observe(self, path: str, layer: Any, inputs: Any, outputs: Any) -> None:
        if not hasattr(outputs, "numpy"):
            # Inside a traced function (e.g. TimeDistributed over an unknown number of steps)
            # the tensors have no values to look at; the layer is reported as not observed.
            return
        figures = keras_model.call_figures(layer, inputs, outputs, self.inference)
        calls = self.layers.setdefault(path, _LayerCalls(layer))
        calls.calls += 1
        calls.spread += figures.spread
        calls.rms += figures.rms
        calls.nonfinite += figures.nonfinite
        if figures.input_mean is not None and figures.input_variance is not None:
            calls.input_mean.append(figures.input_mean)
            calls.input_variance.append(figures.input_variance)
        if figures.moving_stats_error is not None:
            calls.moving_stats_error = max(calls.moving_stats_error, figures.moving_stats_error)


def measure_keras(model: Any, batch: Sequence[np.ndarray]) -> Measured:
    layers = keras_model.batchnorm_layers(model)
    moving = {
        path: (np.asarray(layer.moving_mean.numpy()), np.asarray(layer.moving_variance.numpy()))
        for path, layer in layers
    }

    def run(inputs: Sequence[np.ndarray]) -> Outputs:
        # No ``training`` argument: the model's own inference behaviour, including a
        # ``training=True`` its graph hard-codes (Keras 3's ``predict`` would override that).
        outputs = model(keras_model.pack_inputs(model, inputs))
        return keras_model.output_arrays(model, outputs)

    snapshot = keras_model.Snapshot(model.variables)
    inference, training = _Pass(inference=True), _Pass(inference=False)
    half = _half(batch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras's input-structure notes are not for users
            with keras_model.batchnorm_hooks(layers, False, inference.observe):
                inferred = run(batch)
            alone = run(half) if half is not None else None
            with keras_model.batchnorm_hooks(layers, True, training.observe):
                trained = run(batch)
    finally:
        snapshot.restore()
    notes = []
    if half is None:
        notes.append("a batch of one sample cannot show batch-dependent inference (BN016)")
    silent = [path for path, _ in layers if path not in inference.layers]
    if silent:
        notes.append(
            f"{len(silent)} BatchNorm layer(s) did not run or could not be observed: "
            + ", ".join(silent[:5])
        )
    measurements = [
        _layer_measurement(path, inference.layers[path], training.layers[path], moving[path])
        for path in inference.layers
        if path in training.layers
    ]
    return Measured(
        modes=(INFERENCE, TRAINING),
        outputs=compare_outputs(inferred, trained, alone),
        layers=tuple(measurements),
        notes=tuple(notes),
    )


def _layer_measurement(
    path: str,
    inference: _LayerCalls,
    training: _LayerCalls,
    moving: tuple[np.ndarray, np.ndarray],
) -> LayerMeasurement:
    layer = inference.layer
    return LayerMeasurement(
        path=path,
        calls=inference.calls,
        trainable=bool(layer.trainable),
        epsilon=float(layer.epsilon),
        moving_mean=moving[0],
        moving_variance=moving[1],
        input_mean=np.mean(training.input_mean, axis=0),
        input_variance=np.mean(training.input_variance, axis=0),
        inference_spread=inference.spread / inference.calls,
        inference_rms=inference.rms / inference.calls,
        inference_nonfinite=inference.nonfinite,
        moving_stats_error=inference.moving_stats_error,
        training_spread=training.spread / training.calls,
        training_rms=training.rms / training.calls,
    )


def measure_savedmodel(subject: SavedModelSubject, batch: Sequence[np.ndarray]) -> Measured:
    snapshot = keras_model.Snapshot(subject.variables)
    half = _half(batch)
    try:
        inferred = subject.run(batch, training=False)
        alone = subject.run(half, training=False) if half is not None else None
        trained = subject.run(batch, training=True) if subject.can_train else None
    finally:
        snapshot.restore()
    modes = (INFERENCE, TRAINING) if trained is not None else (INFERENCE,)
    return Measured(modes=modes, outputs=compare_outputs(inferred, trained, alone))
