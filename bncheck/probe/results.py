"""What a probe measured: TensorFlow-free frozen dataclasses that the probe rules judge.

The probe runs the model; the rules never do. Everything a rule needs is here, as plain numbers
and NumPy arrays.

One vocabulary throughout (messages, JSON fields, plots): the **variance ratio** of a channel is
``(stored moving_variance + epsilon) / (reference variance + epsilon)``, so above 1 the stored
variance is too large and below 1 too small; a layer's **variance factor** is how far off its
typical channel is, in either direction, as a factor >= 1: ``exp(RMS over channels of
|log variance ratio|)``. The **mean shift** of a channel is ``|stored moving_mean - reference
mean| / sqrt(reference variance + epsilon)``, in standard deviations.
"""

from __future__ import annotations

import numpy as np

from bncheck.probe.uncertainty import LEVEL, Interval
from bncheck.records import record

#: The two modes the probe runs a model in.
INFERENCE = "inference"
TRAINING = "training"


@record
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


@record
class ProbeData:
    """The data the model was run on."""

    real: bool
    """True for ``--data``; False for a synthetic batch drawn from the input spec."""
    source: str
    """The data file or folder, or how the synthetic batch was drawn."""
    samples: int
    """Samples the model ran on (all batches together)."""
    inputs: tuple[tuple[str, tuple[int, ...]], ...]
    """Each model input's name and the shape of one batch fed to it."""
    batch_size: int = 0
    """Samples per batch."""
    batches: int = 1
    """Batches run in each mode."""
    available: int | None = None
    """Samples the data holds, where known; more than ``samples`` when ``--samples`` capped it."""
    labelled: bool = False
    """Whether labels came with the data (``.npz`` with ``y``, ``--labels``, or an image folder's
    class subfolders), so the probe measured a metric."""
    split_batch: bool = False
    """One batch, re-estimated in two halves, each run with statistics estimated from the other
    (BN015 judges it; with more batches, halves of the batches do the same)."""


@record
class Metric:
    """A model's quality on the labelled data, with three sets of BatchNorm statistics."""

    name: str
    """``accuracy`` (classifier outputs) or ``mean squared error`` (anything else)."""
    stored: float
    """Inference mode with the statistics stored in the model."""
    reestimated: float | None
    """Inference mode with the statistics re-estimated from the data, as ``bncheck recalibrate``
    would write them; ``None`` when nothing was re-estimated."""
    training: float | None
    """Training mode: BatchNorm normalises each batch with that batch's own statistics."""
    change: Interval | None = None
    """The 95% interval of ``reestimated - stored`` by a paired bootstrap over the samples;
    ``None`` when nothing was re-estimated (or, built by hand, when the spread is unknown: the
    change is then taken at its value)."""

    @property
    def higher_is_better(self) -> bool:
        return self.name == "accuracy"

    def gain(self) -> float | None:
        """How much better re-estimated statistics do than the stored ones (negative: worse)."""
        if self.reestimated is None:
            return None
        change = self.reestimated - self.stored
        return change if self.higher_is_better else -change

    def format(self, value: float) -> str:
        return f"{value:.1%}" if self.higher_is_better else f"{value:.4g}"

    def moved(self, before: float, after: float) -> str:
        """``"raise X from a to b"``: the verb follows the numbers, whichever way is better (a
        mean squared error that improves is lowered)."""
        verb = "raise" if after > before else "lower"
        return f"{verb} {self.name} from {self.format(before)} to {self.format(after)}"

    def describe_change(self) -> str:
        """``"+3.1 points, 95% interval -0.8 to +7.0"`` (accuracy) or ``"+1497, 95% interval
        -210 to +3204"`` (mean squared error): the change re-estimated statistics make, and its
        uncertainty where known."""
        if self.reestimated is None:
            return ""
        text = self._signed(self.reestimated - self.stored)
        if self.change is not None:
            text += (
                f", {LEVEL:.0%} interval {self._signed(self.change.low, unit=False)} to "
                f"{self._signed(self.change.high, unit=False)}"
            )
        return text

    def change_with_interval(self) -> str:
        """``"raise accuracy from 90.0% to 93.1% (+3.1 points, 95% interval ...)"``; without an
        interval, the two values alone."""
        assert self.reestimated is not None
        moved = self.moved(self.stored, self.reestimated)
        return moved if self.change is None else f"{moved} ({self.describe_change()})"

    def _signed(self, value: float, unit: bool = True) -> str:
        """``value`` with its sign: a change of accuracy in points to one decimal, or to two
        significant digits when it is too small for one (an interval bound of +0.04 points
        excludes no change, and "+0.0" would hide on which side of it it lies); no change at all
        is ``0.0``."""
        if self.higher_is_better:
            points = value * 100
            if points == 0:
                text = "0.0"
            elif abs(points) < 0.05:
                text = f"{points:+.2g}"
            else:
                text = f"{points:+.1f}"
            return text + (" points" if unit else "")
        return f"{value:+.4g}" if value != 0 else "0"


@record
class OutputMeasurement:
    """One model output, compared across modes, statistics and batches, over all the data."""

    name: str
    inference_spread: float
    """Relative spread across the batch in inference mode: mean over features of the standard
    deviation across samples, over the root mean square of the output; averaged over batches.
    0 when every sample gets the same output."""
    inference_rms: float
    """Root mean square of the inference-mode output (finite values)."""
    inference_nonfinite: int
    """NaN or infinite values in the inference-mode output."""
    training_spread: float | None = None
    """The same spread with BatchNorm in training mode; ``None`` when not run."""
    training_rms: float | None = None
    relative_error: float | None = None
    """``|training - inference| / |training|`` (Frobenius norms over all samples): how far
    batch statistics and stored statistics disagree. Informative only: a network that learned
    with its stored statistics (see BN001) disagrees with training mode by design."""
    top1_agreement: float | None = None
    """For a classifier-shaped output (samples x classes): the fraction of samples whose
    highest-scoring class is the same in training and in inference mode."""
    batch_dependence: float | None = None
    """Inference mode: ``|y(first half alone) - y(first half within the whole batch)| / |y|``;
    ``None`` when not measured."""
    reestimated_relative_error: float | None = None
    """Inference mode, ``|y(re-estimated statistics) - y(stored statistics)| / |y(stored)|``
    over all samples: what recalibrating would change. ``None`` when nothing was re-estimated."""
    reestimated_top1_agreement: float | None = None
    """For a classifier-shaped output: the fraction of samples whose top-1 class is the same with
    the stored and with the re-estimated statistics."""
    metric: Metric | None = None
    """The output's quality on labelled data; ``None`` without labels."""


@record
class Population:
    """A layer's population statistics, estimated from the data: the average of its per-batch
    input mean and variance (with Bessel's correction) with every BatchNorm layer in training
    mode and the final weights, the estimate ``bncheck recalibrate`` writes; with the estimate's
    own noise."""

    mean: np.ndarray
    variance: np.ndarray
    mean_error: np.ndarray
    """Standard error of ``mean`` per channel: the spread of the batch means across batches over
    the square root of the number of batches."""
    variance_error: np.ndarray
    """Standard error of ``variance`` per channel, likewise."""
    batches: int
    """Calls of the layer the estimate averages over."""


@record
class Staleness:
    """How far a layer's stored statistics are from its population statistics, beyond the
    estimate's noise."""

    mean_shift: float
    """Typical mean shift beyond noise: ``sqrt(max(0, mean(shift^2) - mean(noise^2)))`` over
    channels, where a channel's noise is its mean's standard error in standard deviations."""
    variance_factor: float
    """Typical variance factor beyond noise, >= 1: ``exp`` of the same noise-corrected root mean
    square of the log variance ratios."""
    channel_shift: np.ndarray
    """The mean shift of each channel."""
    channel_ratio: np.ndarray
    """The variance ratio of each channel (stored over population)."""

    @property
    def score(self) -> float:
        """One number to rank layers by: the mean shift or the log of the factor, the larger."""
        return max(self.mean_shift, float(np.log(self.variance_factor)))


def staleness(
    stored_mean: np.ndarray, stored_variance: np.ndarray, population: Population, epsilon: float
) -> Staleness | None:
    """Stored statistics against a population estimate; ``None`` when they are not comparable
    (another channel count), not finite (BN003's and BN004's to report), or the estimate's noise
    is unknown (a single batch)."""
    mean = np.asarray(population.mean, dtype=np.float64).ravel()
    variance = np.asarray(population.variance, dtype=np.float64).ravel()
    stored = np.asarray(stored_mean, dtype=np.float64).ravel()
    stored_var = np.asarray(stored_variance, dtype=np.float64).ravel()
    if mean.shape != stored.shape:
        return None
    with np.errstate(all="ignore"):
        scale = np.sqrt(variance + epsilon)
        channel_shift = np.abs(stored - mean) / scale
        shift_noise = np.asarray(population.mean_error, dtype=np.float64).ravel() / scale
        channel_ratio = (stored_var + epsilon) / (variance + epsilon)
        log_ratio = np.log(channel_ratio)
        log_noise = np.asarray(population.variance_error, dtype=np.float64).ravel() / (
            variance + epsilon
        )
    if not (np.all(np.isfinite(channel_shift)) and np.all(np.isfinite(log_ratio))):
        return None
    if not (np.all(np.isfinite(shift_noise)) and np.all(np.isfinite(log_noise))):
        return None
    return Staleness(
        mean_shift=_beyond_noise(channel_shift, shift_noise),
        variance_factor=float(np.exp(_beyond_noise(log_ratio, log_noise))),
        channel_shift=channel_shift,
        channel_ratio=channel_ratio,
    )


def _beyond_noise(values: np.ndarray, noise: np.ndarray) -> float:
    """Root mean square of ``values`` with the noise's share of it taken out: the observed
    square of a channel is on average its true square plus its noise's square."""
    return float(np.sqrt(max(0.0, float(np.mean(values**2) - np.mean(noise**2)))))


@record
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
    """The layer's stored moving mean (the probe leaves it unchanged)."""
    moving_variance: np.ndarray
    inference_spread: float
    """Relative spread across the batch of the layer's output in inference mode (as for
    outputs), averaged over batches."""
    inference_rms: float
    inference_nonfinite: int
    moving_stats_error: float
    """Inference mode: how far the layer's output is from normalising its input with its moving
    statistics, relative to the output. Near 0 for a layer that infers as it should; large for
    one that still uses the statistics of its batch."""
    training_spread: float
    """The same spread with every BatchNorm layer in training mode."""
    training_rms: float
    population: Population | None = None
    """The layer's population statistics on the data; ``None`` for synthetic data or a layer
    that could not be observed."""
    reestimated: bool = False
    """Whether the comparison with re-estimated statistics replaced this layer's: trainable
    layers are, frozen ones keep theirs (as ``bncheck recalibrate`` does by default)."""
    momentum: float | None = None
    untouched: bool = False
    """The stored statistics still equal their initial values while gamma or beta trained, or
    in a layer that has neither (``bncheck.verdict.statistics_never_moved``): the network learned
    with them, not with batch statistics, unless the momentum (>= 1) kept them there."""

    def staleness(self) -> Staleness | None:
        if self.population is None:
            return None
        return staleness(self.moving_mean, self.moving_variance, self.population, self.epsilon)

    @property
    def learned_without_batch_statistics(self) -> bool:
        """Statistics untouched by a training loop whose momentum would have moved them (the
        verdict is ``bncheck.verdict``'s)."""
        from bncheck import verdict

        return verdict.measured_learned_without_batch_statistics(self)


@record
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
    needs: str | None = None
    """The option that would let a probe that did not run run (``--architecture`` for a
    weights-only file); ``None`` when it ran or no option would."""
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

    @property
    def learned_without_batch_statistics(self) -> tuple[str, ...]:
        """Layers whose untouched statistics mean the network learned with them."""
        return tuple(layer.path for layer in self.layers if layer.learned_without_batch_statistics)
