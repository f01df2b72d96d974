"""The runner protocol: what the measurement needs from a runtime, whatever runs the model.

A runner holds one loaded model and runs it on a batch in up to three modes:

- ``stored``: inference as the runtime itself runs it, with the model's stored statistics (its
  outputs are the runtime's own inference outputs, bit for bit);
- ``training``: every BatchNorm layer normalising with its batch's statistics, every other layer
  in inference mode, each layer's per-channel input moments recorded (what re-estimation
  averages);
- ``estimated``: inference with some layers' statistics replaced (``use_estimates``): what
  ``bncheck recalibrate`` would write.

Implementations: ``passes.Passes`` (Keras, a live model), ``onnx_model.OnnxRunner`` (onnxruntime,
the graph rewritten), ``torchscript_model.TorchScriptRunner`` (PyTorch). ``measure.measure`` is
written once over this protocol. A runner is a context manager: whatever a pass changes in the
model (training mode updating statistics) is put back on exit.

This module imports no framework.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from bncheck.records import record

STORED = "stored"
TRAINING = "training"
ESTIMATED = "estimated"

#: New statistics by layer path: (mean, variance) as the framework stores them.
Statistics = Mapping[str, tuple[np.ndarray, np.ndarray]]


@record
class CallFigures:
    """What one call of a BatchNorm layer did to one batch."""

    path: str
    spread: float
    """Relative spread of the output across the batch (see ``OutputMeasurement``)."""
    rms: float
    nonfinite: int
    moving_stats_error: float | None
    """Stored mode only: ``|output - moving-statistics normalisation| / |output|``."""


@record
class Moments:
    """One layer's per-channel input statistics in one training-mode pass, pooled over all its
    calls in the pass (a layer inside TimeDistributed, a recurrent cell or a custom layer calling
    it twice)."""

    path: str
    mean: np.ndarray
    variance: np.ndarray
    """The biased variance over every value the layer normalised in the pass (unless
    ``corrected``)."""
    samples: int
    values: int
    """Values per channel the statistics are taken over (samples times positions)."""
    corrected: bool = False
    """``variance`` already carries Bessel's correction: what PyTorch's training-mode update
    records, where the count of values is not seen."""

    @property
    def unbiased_variance(self) -> np.ndarray:
        """The variance with Bessel's correction: its average over batches estimates the
        population variance whatever the batch size."""
        if self.corrected:
            return self.variance
        return self.variance * (self.values / max(self.values - 1, 1))


@record
class PassResult:
    """One model call: its outputs and what each BatchNorm call recorded. A runtime that cannot
    see inside a layer on every call records fewer ``figures`` (the measurement averages those
    it gets)."""

    outputs: list[tuple[str, np.ndarray]]
    figures: list[CallFigures]
    moments: list[Moments]


@record
class LayerInfo:
    """One BatchNorm layer as its runner sees it, before anything ran."""

    path: str
    """The layer's path, as the static report names it."""
    trainable: bool
    """Whether training would update the layer's statistics (re-estimated by default)."""
    epsilon: float
    momentum: float | None
    """In the framework's own convention; ``None`` where it has none (a cumulative average)."""
    moving_mean: np.ndarray
    moving_variance: np.ndarray
    gamma: np.ndarray | None = None
    """The layer's scale, where the runner reads it (ONNX, TorchScript): with ``beta``, what
    tells a runnable export of a model from another network's when the statistics cannot (all
    at their initial values)."""
    beta: np.ndarray | None = None


class Runner(Protocol):
    """One loaded model the measurement runs (see the module's docstring)."""

    fixed_batch: int | None
    """The one batch size the model takes (an ONNX export without a dynamic batch dimension);
    ``None`` when it takes any."""

    @property
    def layers(self) -> Sequence[LayerInfo]:
        """The model's BatchNorm layers, in the order they run."""
        ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        """Call the model once per mode on the same inputs."""
        ...

    def use_estimates(self, statistics: Statistics) -> None:
        """The statistics ``estimated`` passes use, by layer path; other layers keep theirs."""
        ...


def channel_shape(ndim: int) -> list[int]:
    """The shape a per-channel vector broadcasts with over ``(N, C, ...)`` values."""
    return [1, -1] + [1] * (ndim - 2)


def figures_of(
    path: str,
    output: np.ndarray,
    inputs: np.ndarray | None = None,
    stored: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float] | None = None,
) -> CallFigures:
    """A layer call's figures from its output, channels first (``(N, C, ...)``), computed here
    for runtimes that hand the activations back. With ``inputs`` and ``stored`` (gamma, beta,
    mean, variance, epsilon): how far the output is from normalising the input with them."""
    values = np.asarray(output, dtype=np.float64)
    flat = values.reshape(len(values), -1)
    finite = np.isfinite(flat)
    nonfinite = int(flat.size - np.count_nonzero(finite))
    clean = np.where(finite, flat, 0.0) if nonfinite else flat
    rms = float(np.sqrt(np.mean(np.square(clean)))) if clean.size else 0.0
    spread = 0.0
    if len(flat) >= 2 and rms > 0.0:
        spread = float(np.mean(np.std(clean, axis=0))) / rms
    error = None
    if inputs is not None and stored is not None:
        gamma, beta, mean, variance, epsilon = stored
        shape = channel_shape(values.ndim)
        x = np.asarray(inputs, dtype=np.float64)
        expected = (x - mean.reshape(shape)) / np.sqrt(variance.reshape(shape) + epsilon)
        expected = expected * gamma.reshape(shape) + beta.reshape(shape)
        with np.errstate(all="ignore"):
            scale = float(np.linalg.norm(values.ravel()))
            difference = float(np.linalg.norm((values - expected).ravel()))
        error = difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))
    return CallFigures(path, spread, rms, nonfinite, error)
