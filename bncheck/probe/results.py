"""What a probe measured: TensorFlow-free frozen dataclasses that the probe rules judge.

The probe runs the model; the rules never do. Everything a rule needs is here, as plain numbers
and NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The two modes the probe runs a model in.
INFERENCE = "inference"
TRAINING = "training"


@dataclass(frozen=True)
class CodeReference:
    """Something in a model file that would run code, or needs code, when the model is loaded."""

    kind: str
    """``lambda`` (a Lambda layer), ``bytecode`` (marshalled Python function), ``function``
    (a function from a module outside Keras's modelling API), ``custom-class`` (a class Keras does
    not ship), ``graph-op`` (a SavedModel graph op that calls Python or touches files) or
    ``torchscript`` (a TorchScript archive's compiled code)."""
    where: str
    """The layer path, or the place in the configuration or graph, that holds it."""
    detail: str
    """What it names, e.g. ``os.system``, ``my_package>Scale`` or ``WriteFile``."""

    @property
    def describe(self) -> str:
        return f"{_KIND_LABELS[self.kind]} {self.detail} ({self.where})"


_KIND_LABELS = {
    "lambda": "Lambda layer",
    "bytecode": "Python bytecode",
    "function": "function",
    "custom-class": "custom class",
    "graph-op": "graph op",
    "torchscript": "TorchScript",
}


@dataclass(frozen=True)
class ProbeData:
    """The batch the model was run on."""

    real: bool
    """True for ``--data``; False for a synthetic batch drawn from the input spec."""
    source: str
    """The data file, or how the synthetic batch was drawn."""
    samples: int
    """Samples in the batch."""
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    """Each model input's name and the shape of the batch fed to it."""


@dataclass(frozen=True)
class OutputMeasurement:
    """One model output, compared across modes and batches."""

    name: str
    inference_spread: float
    """Relative spread across the batch in inference mode: mean over features of the standard
    deviation across samples, over the root mean square of the output. 0 when every sample gets
    the same output."""
    inference_rms: float
    """Root mean square of the inference-mode output (finite values)."""
    inference_nonfinite: int
    """NaN or infinite values in the inference-mode output."""
    training_spread: float | None = None
    """The same spread with BatchNorm in training mode; ``None`` when not run."""
    training_rms: float | None = None
    relative_error: float | None = None
    """``|training - inference| / |training|`` (Frobenius norms) over the batch."""
    top1_agreement: float | None = None
    """For a classifier-shaped output (samples x classes): the fraction of samples whose
    highest-scoring class is the same in both modes."""
    batch_dependence: float | None = None
    """Inference mode: ``|y(first half alone) - y(first half within the whole batch)| / |y|``;
    ``None`` when not measured."""


@dataclass(frozen=True)
class Staleness:
    """How far a layer's moving statistics are from the statistics of its input on the data."""

    mean_shift: float
    """Typical standardised mean shift: root mean square over channels of
    ``|input mean - moving_mean| / sqrt(input variance + epsilon)``."""
    variance_ratio: float
    """Typical variance ratio, a factor >= 1 in either direction: the exponential of the root mean
    square over channels of ``log((moving_variance + epsilon) / (input variance + epsilon))``."""
    channel_shift: np.ndarray
    """The standardised mean shift of each channel."""
    channel_ratio: np.ndarray
    """``(moving_variance + epsilon) / (input variance + epsilon)`` of each channel."""

    @property
    def score(self) -> float:
        """One number to rank layers by: the mean shift or the log of the ratio, the larger."""
        return max(self.mean_shift, float(np.log(self.variance_ratio)))


@dataclass(frozen=True)
class LayerMeasurement:
    """One BatchNormalization layer, seen from inside the model while it ran."""

    path: str
    """Nested layer path, as in the static report."""
    calls: int
    """How often the layer ran in one forward pass (more than once when shared or wrapped)."""
    trainable: bool
    """Whether Keras would update the layer's statistics in training mode."""
    epsilon: float
    moving_mean: np.ndarray
    """The layer's moving mean before the probe (which leaves it unchanged)."""
    moving_variance: np.ndarray
    input_mean: np.ndarray
    """Per-channel mean of the layer's input, with every BatchNorm layer in training mode."""
    input_variance: np.ndarray
    """Per-channel (biased) variance of the layer's input, measured like ``input_mean``."""
    inference_spread: float
    """Relative spread across the batch of the layer's output in inference mode (as for
    outputs)."""
    inference_rms: float
    inference_nonfinite: int
    moving_stats_error: float
    """Inference mode: how far the layer's output is from normalising its input with its moving
    statistics, relative to the output. Near 0 for a layer that infers as it should; large for
    one that still uses the statistics of its batch."""
    training_spread: float
    """The same spread with every BatchNorm layer in training mode."""
    training_rms: float

    def staleness(self) -> Staleness | None:
        """The moving statistics against the measured input statistics; ``None`` when they are
        not comparable (another channel count) or not finite (BN003's and BN004's to report)."""
        mean = np.asarray(self.input_mean, dtype=np.float64).ravel()
        variance = np.asarray(self.input_variance, dtype=np.float64).ravel()
        moving_mean = np.asarray(self.moving_mean, dtype=np.float64).ravel()
        moving_variance = np.asarray(self.moving_variance, dtype=np.float64).ravel()
        if mean.shape != moving_mean.shape:
            return None
        with np.errstate(all="ignore"):
            channel_shift = np.abs(mean - moving_mean) / np.sqrt(variance + self.epsilon)
            channel_ratio = (moving_variance + self.epsilon) / (variance + self.epsilon)
            log_ratio = np.log(channel_ratio)
        if not (np.all(np.isfinite(channel_shift)) and np.all(np.isfinite(log_ratio))):
            return None
        return Staleness(
            mean_shift=float(np.sqrt(np.mean(np.square(channel_shift)))),
            variance_ratio=float(np.exp(np.sqrt(np.mean(np.square(log_ratio))))),
            channel_shift=channel_shift,
            channel_ratio=channel_ratio,
        )


@dataclass(frozen=True)
class ProbeResult:
    """Everything the probe found for one model, including why it did not run."""

    path: str
    loader: str | None
    """How the model was loaded: ``keras``, ``tf-keras SavedModel`` or ``Keras export
    SavedModel``; ``None`` when it was not loaded."""
    content: tuple[CodeReference, ...]
    """Code found by the static safety check, before anything was loaded."""
    unsafe: bool
    """``--unsafe`` was given."""
    skipped: str | None = None
    """Why the probe did not run; ``None`` when it ran."""
    data: ProbeData | None = None
    modes: tuple[str, ...] = ()
    """The modes the model ran in: ``inference`` and, where the format allows, ``training``."""
    outputs: tuple[OutputMeasurement, ...] = ()
    layers: tuple[LayerMeasurement, ...] = ()
    """BatchNorm layers in the order they ran."""
    notes: tuple[str, ...] = ()
    """What the probe could not measure or judge, and why."""

    @property
    def ran(self) -> bool:
        return self.skipped is None

    @property
    def real_data(self) -> bool:
        return self.data is not None and self.data.real
