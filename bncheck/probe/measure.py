"""Run a loaded model over the data and measure what its BatchNorm layers do.

For a Keras model (``measure_keras``), two sweeps over the same batches:

1. **inference mode with the stored statistics**, and **training mode** with BatchNorm alone
   switched to batch statistics, in one compiled call per batch: the outputs both ways, each
   layer's figures, and each layer's per-batch input mean and variance, summed into its
   population statistics (``estimate``). The first half of the first batch also runs alone, to
   see whether a sample's output depends on the rest of its batch;
2. **inference mode with re-estimated statistics** in place of the trainable layers' (what
   ``bncheck recalibrate`` would write), compared with the first sweep's stored-statistics
   outputs (kept in memory, or computed again in the same call when they are too many). The
   statistics are cross-fitted: the even batches run with those estimated from the odd ones and
   the odd with the even's (a lone batch: each half with the other half's), since statistics
   measured on the data they were estimated from fit it by construction. A batch that is not
   the first sweep's (a dataset that reshuffles on every pass) is compared with its own
   stored-statistics outputs, computed again, and the report says so.

Every figure is summed over all batches, so a verdict rests on all the data given, not on one
batch. The model's variables are the same afterwards as before (``Passes`` restores them).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe import uncertainty
from bncheck.probe.data import Batch
from bncheck.probe.results import (
    INFERENCE,
    CodeReference,
    LayerMeasurement,
    Metric,
    OutputMeasurement,
    ProbeResult,
)
from bncheck.probe.results import TRAINING as TRAINING_MODE
from bncheck.probe.results import Population as PopulationEstimate
from bncheck.probe.runtime import (
    ESTIMATED,
    STORED,
    TRAINING,
    CallFigures,
    LayerInfo,
    Moments,
    Runner,
)
from bncheck.probe.runtimes import keras_model
from bncheck.probe.runtimes.savedmodel import SavedModelSubject
from bncheck.records import record

if TYPE_CHECKING:
    from bncheck.probe.data.batches import BatchPlan
    from bncheck.probe.runtimes.passes import Passes

#: Reads the data from the start, batch by batch; called once per sweep.
BatchSource = Callable[[], Iterable[Batch]]
#: Told after each batch of a sweep: the sweep's name and the batches done.
Progress = Callable[[str, int], None]


@record
class Measured:
    """The measurements of one probe run."""

    modes: tuple[str, ...]
    outputs: tuple[OutputMeasurement, ...]
    layers: tuple[LayerMeasurement, ...] = ()
    notes: tuple[str, ...] = ()
    samples: int = 0
    batches: int = 0
    split_batch: bool = False
    """One batch, re-estimated in two halves (see ``ProbeData.split_batch``)."""


@dataclass
class MomentSums:
    """Batch-size-weighted sums of one layer's per-call input statistics: the mean, and the
    variance with Bessel's correction, so that the population estimate does not depend on the
    batch size (a batch of 8 samples has a biased variance 7/8 of the population's)."""

    mean: np.ndarray | float = 0.0
    mean_squares: np.ndarray | float = 0.0
    variance: np.ndarray | float = 0.0
    variance_squares: np.ndarray | float = 0.0
    weight: int = 0
    calls: int = 0

    def add(self, moments: Moments) -> None:
        n = moments.samples
        variance = moments.unbiased_variance
        self.mean = self.mean + n * moments.mean
        self.mean_squares = self.mean_squares + n * moments.mean**2
        self.variance = self.variance + n * variance
        self.variance_squares = self.variance_squares + n * variance**2
        self.weight += n
        self.calls += 1

    def population(self) -> PopulationEstimate:
        mean = np.asarray(self.mean) / self.weight
        variance = np.asarray(self.variance) / self.weight
        spread_mean = np.maximum(np.asarray(self.mean_squares) / self.weight - mean**2, 0.0)
        spread_var = np.maximum(np.asarray(self.variance_squares) / self.weight - variance**2, 0.0)
        # Standard errors from the spread across calls; a single call has no spread to show,
        # and an unknown noise (infinite) keeps BN014 from judging.
        if self.calls < 2:
            unknown = np.full_like(mean, np.inf)
            return PopulationEstimate(mean, variance, unknown, unknown, self.calls)
        scale = np.sqrt(1.0 / (self.calls - 1))
        return PopulationEstimate(
            mean=mean,
            variance=variance,
            mean_error=np.sqrt(spread_mean) * scale,
            variance_error=np.sqrt(spread_var) * scale,
            batches=self.calls,
        )


def estimate(
    passes: Passes, batches: Iterable[Batch], done: Callable[[int, int], None] = lambda _, __: None
) -> tuple[dict[str, MomentSums], int, int]:
    """Sum each layer's training-mode input statistics over ``batches``: (sums by layer path,
    batches, samples); ``done`` is told the batches and samples done after each batch. Their
    averages are precise BatchNorm's population statistics (fvcore's
    precise BN, ``torch.optim.swa_utils.update_bn``): every layer normalises with batch
    statistics, as during training, which is what its gamma and beta were trained against and
    what Keras's moving averages estimate; and it takes one pass over the data, where measuring
    each layer after fixing the ones before it takes one pass per level of BatchNorm depth.
    Under a strategy (``Passes(strategy=...)``) each batch's moments are the whole global
    batch's, combined across replicas, so the sums are those of the same batches on one
    device."""
    sums: dict[str, MomentSums] = {}
    count = samples = 0
    for step in passes.sweep(batches, TRAINING, outputs=False):
        [result] = step.results
        for moments in result.moments:
            sums.setdefault(moments.path, MomentSums()).add(moments)
        count += 1
        samples += step.size
        done(count, samples)
    return sums, count, samples


@dataclass
class _LayerFigures:
    """A layer's output figures summed over its calls in one mode."""

    calls: int = 0
    spread: float = 0.0
    rms: float = 0.0
    nonfinite: int = 0
    error: float = 0.0

    def add(self, figures: CallFigures) -> None:
        self.calls += 1
        self.spread += figures.spread
        self.rms += figures.rms
        self.nonfinite += figures.nonfinite
        if figures.moving_stats_error is not None:
            self.error = max(self.error, figures.moving_stats_error)


@dataclass
class OutputSums:
    """One output's figures summed over batches."""

    batches: int = 0
    spread: float = 0.0
    rms_squares: float = 0.0
    values: int = 0
    nonfinite: int = 0
    training_spread: float = 0.0
    training_rms_squares: float = 0.0
    training_gap: float = 0.0
    training_norm: float = 0.0
    training_same: int = 0
    estimated_gap: float = 0.0
    stored_norm: float = 0.0
    estimated_same: int = 0
    classified: int = 0
    """Samples seen in inference mode, the denominator of the top-1 agreements."""
    classifier: bool = True
    half_dependence: float | None = None

    def add_inference(self, stored: np.ndarray) -> None:
        relative, rms, nonfinite = spread(stored)
        self.batches += 1
        self.spread += relative
        self.rms_squares += rms**2 * stored.size
        self.values += stored.size
        self.nonfinite += nonfinite
        self.stored_norm += _squared_norm(stored)
        self.classifier = self.classifier and is_classifier(stored)
        self.classified += len(stored)

    def add_training(self, stored: np.ndarray, trained: np.ndarray) -> None:
        relative, rms, _ = spread(trained)
        self.training_spread += relative
        self.training_rms_squares += rms**2 * trained.size
        self.training_gap += _squared_norm(trained - stored)
        self.training_norm += _squared_norm(trained)
        if self.classifier:
            self.training_same += int(np.sum(np.argmax(stored, 1) == np.argmax(trained, 1)))

    def add_estimated(self, stored: np.ndarray, estimated: np.ndarray) -> None:
        self.estimated_gap += _squared_norm(estimated - stored)
        if self.classifier:
            self.estimated_same += int(np.sum(np.argmax(stored, 1) == np.argmax(estimated, 1)))

    def measurement(
        self, name: str, trained: bool, estimated: bool, metric: Metric | None
    ) -> OutputMeasurement:
        classified = self.classifier and self.classified > 0
        fields: dict[str, Any] = {}
        if trained:
            fields.update(
                training_spread=self.training_spread / self.batches,
                training_rms=float(np.sqrt(self.training_rms_squares / max(self.values, 1))),
                relative_error=_ratio(self.training_gap, self.training_norm),
                top1_agreement=self.training_same / self.classified if classified else None,
            )
        if estimated:
            fields.update(
                reestimated_relative_error=_ratio(self.estimated_gap, self.stored_norm),
                reestimated_top1_agreement=(
                    self.estimated_same / self.classified if classified else None
                ),
            )
        return OutputMeasurement(
            name=name,
            inference_spread=self.spread / self.batches,
            inference_rms=float(np.sqrt(self.rms_squares / max(self.values, 1))),
            inference_nonfinite=self.nonfinite,
            batch_dependence=self.half_dependence,
            metric=metric,
            **fields,
        )


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


Outputs = list[tuple[str, np.ndarray]]


def is_classifier(values: np.ndarray) -> bool:
    """A classifier-shaped output: one row of two or more class scores per sample."""
    return values.ndim == 2 and values.shape[1] >= 2


def _squared_norm(values: np.ndarray) -> float:
    clean = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return float(np.sum(np.square(clean)))


def _ratio(difference: float, reference: float) -> float:
    if reference == 0.0:
        return 0.0 if difference == 0.0 else float("inf")
    return float(np.sqrt(difference / reference))


class MetricSums:
    """A metric over labelled batches: accuracy for classifiers, mean squared error otherwise.
    Each sample's value (1 or 0 for a right or wrong class, its squared error) is kept, batch
    by batch (one float per sample), for the paired bootstrap of a change
    (``bncheck.probe.uncertainty``)."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.total = 0.0
        self.samples = 0
        self.per_batch: list[np.ndarray] = []
        """Each added batch's per-sample values, in the order they were added."""

    def add(self, predictions: np.ndarray, labels: np.ndarray) -> None:
        labels = fitted_labels(predictions, labels)
        if self.name is None:
            self.name = metric_name(predictions, labels)
        if self.name == "accuracy" and is_classifier(predictions) and labels.ndim == 1:
            classes = predictions.shape[1]
            outside = labels[(labels < 0) | (labels >= classes)]
            if outside.size:
                raise UsageError(
                    f"the labels name classes the model's {classes} outputs do not have (e.g. "
                    f"{outside[0]:g}): give class numbers 0 to {classes - 1}"
                )
        values = self.per_sample(self.name, predictions, labels)
        self.per_batch.append(values)
        self.total += float(np.sum(values))
        self.samples += len(labels)

    def value(self) -> float | None:
        return None if self.samples == 0 else self.total / self.samples

    def values(self, order: Sequence[int] | None = None) -> np.ndarray:
        """Every sample's value, the batches in the order added or in ``order``."""
        batches = self.per_batch if order is None else [self.per_batch[i] for i in order]
        return np.concatenate(batches) if batches else np.zeros(0)

    @staticmethod
    def per_sample(name: str, predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The metric of each sample of one batch: its squared error, or whether it is right."""
        if name == "mean squared error":
            difference = predictions.reshape(len(labels), -1) - labels.reshape(len(labels), -1)
            return np.mean(np.square(difference, dtype=np.float64), axis=1)
        if is_classifier(predictions):
            truth = labels if labels.ndim == 1 else np.argmax(labels, axis=1)
            return (np.argmax(predictions, axis=1) == truth).astype(np.float64)
        scores = predictions.ravel()
        threshold = 0.5 if scores.min() >= 0.0 and scores.max() <= 1.0 else 0.0
        return ((scores > threshold) == (labels.ravel() > 0.5)).astype(np.float64)


def fitted_labels(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The labels in the shape the metric compares: class numbers as one column, ``(N, 1)``
    included, for a classifier; refused where they cannot describe the output."""
    width = 1 if predictions.ndim == 1 else int(np.prod(predictions.shape[1:]))
    if is_classifier(predictions):
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim == 1:
            fraction = labels[np.mod(labels, 1) != 0]
            if fraction.size:
                raise UsageError(
                    f"the labels are not class numbers (e.g. {fraction[0]:g}) for the model's "
                    f"{predictions.shape[1]} class outputs: give whole class numbers or one-hot "
                    "rows"
                )
            return labels
    if labels.reshape(len(labels), -1).shape[1] != width:
        raise UsageError(
            f"labels of shape {tuple(labels.shape[1:])} per sample do not fit the model's output "
            f"of shape {tuple(predictions.shape[1:])}"
        )
    return labels


def metric_name(predictions: np.ndarray, labels: np.ndarray) -> str:
    """``accuracy`` when the labels name classes of the output (class numbers, or one-hot or
    probability rows), else ``mean squared error``."""
    if is_classifier(predictions):
        if labels.ndim == 1:
            return "accuracy"
        if labels.shape == predictions.shape and np.all((labels >= 0) & (labels <= 1)):
            return "accuracy"
    binary = predictions.ndim == 1 or (predictions.ndim == 2 and predictions.shape[1] == 1)
    if binary and labels.size == len(labels) and np.all(np.isin(labels, (0, 1))):
        return "accuracy"
    return "mean squared error"


#: Stored-statistics outputs kept between the two sweeps up to this many values; beyond it the
#: second sweep computes them again rather than hold them all in memory.
KEEP_OUTPUT_VALUES = 16 << 20


def probe_result(
    runner: Runner,
    source: BatchPlan,
    found: ProbeFound,
    untouched: Mapping[str, bool],
    step: Callable[[str], None],
    notes: Sequence[str] = (),
) -> ProbeResult:
    """The probe of a model a non-Keras runner runs: ``measure`` over ``source``'s batches,
    every layer whose statistics can be replaced re-estimated, as ``found`` describes it."""
    from bncheck.probe.data.batches import data_notes, sweep_progress

    with runner:
        measured = measure(
            runner,
            source.batches,
            lambda layer: layer.trainable,
            untouched,
            sweep_progress(step, source),
            source.real,
        )
    return ProbeResult(
        path=found.path,
        loader=found.loader,
        content=found.content,
        unsafe=found.unsafe,
        data=replace(
            source.describe(measured.samples, measured.batches),
            split_batch=measured.split_batch,
        ),
        modes=measured.modes,
        outputs=measured.outputs,
        layers=measured.layers,
        notes=(*data_notes(source.real, source.integer_inputs), *notes, *measured.notes),
    )


@record
class ProbeFound:
    """What a runtime's probe reports of the file beside the measurements."""

    path: str
    loader: str
    content: tuple[CodeReference, ...]
    unsafe: bool


def measure_keras(
    model: Any,
    batches: BatchSource,
    reestimate: Callable[[str, Any], bool],
    untouched: Mapping[str, bool],
    progress: Progress = lambda _, __: None,
    real: bool = True,
) -> Measured:
    """Measure a live Keras ``model`` (see ``measure``); ``reestimate(path, layer)`` is asked of
    the Keras layer."""
    from bncheck.probe.runtimes.keras_runner import KerasRunner

    layers = keras_model.batchnorm_layers(model)
    chosen = {path for path, layer in layers if reestimate(path, layer)}
    with warnings.catch_warnings(), KerasRunner(model, layers) as runner:
        warnings.simplefilter("ignore")  # Keras's input-structure notes are not for users
        return measure(runner, batches, lambda info: info.path in chosen, untouched, progress, real)


def measure(
    runner: Runner,
    batches: BatchSource,
    reestimate: Callable[[LayerInfo], bool],
    untouched: Mapping[str, bool],
    progress: Progress = lambda _, __: None,
    real: bool = True,
) -> Measured:
    """Measure the model ``runner`` runs over ``batches``, in its three modes (see the module's
    docstring). ``reestimate`` says which layers the comparison gives re-estimated statistics;
    ``untouched`` says, by layer path, whether the static description found the layer's
    statistics at their initial values while gamma or beta trained. Synthetic data (``real``
    False) gets the first sweep only: its statistics describe nothing."""
    first = _first_sweep(runner, batches, progress)
    populations = {path: total.population() for path, total in first.sums.items()} if real else {}
    targets = {
        layer.path: populations[layer.path]
        for layer in runner.layers
        if layer.path in populations and reestimate(layer)
    }
    split = bool(targets) and first.count == 1 and first.batch is not None
    split = split and first.batch is not None and _splits(first.batch)
    if split:
        assert first.batch is not None
        first.halves = _half_moments(runner, first.batch)
    _reestimated_sweep(runner, batches, first, targets, split, progress)
    return _assemble(runner, first, populations, targets, split, untouched, real)


@dataclass
class _Sweep:
    """What the sweeps summed: per layer, per output, per metric."""

    inference: dict[str, _LayerFigures] = field(default_factory=dict)
    training: dict[str, _LayerFigures] = field(default_factory=dict)
    outputs: dict[str, OutputSums] = field(default_factory=dict)
    metrics: dict[str, MetricSums] = field(
        default_factory=lambda: {key: MetricSums() for key in (STORED, TRAINING, ESTIMATED)}
    )
    sums: dict[str, MomentSums] = field(default_factory=dict)
    halves: tuple[dict[str, MomentSums], dict[str, MomentSums]] = field(
        default_factory=lambda: ({}, {})
    )
    kept: list[list[np.ndarray]] | None = field(default_factory=list)
    fingerprints: list[int] = field(default_factory=list)
    """Of each batch's inputs, to tell whether a second pass over the data gives it again."""
    notes: list[str] = field(default_factory=list)
    count: int = 0
    samples: int = 0
    batch: Batch | None = None
    """The first batch."""


def _first_sweep(runner: Runner, batches: BatchSource, progress: Progress) -> _Sweep:
    """Inference with the stored statistics and batch-statistics mode, batch by batch: the
    outputs both ways, each layer's figures, and its input moments summed."""
    sweep = _Sweep()
    for batch in batches():
        if sweep.batch is None:
            sweep.batch = batch
        stored_pass, training_pass = runner.run(batch.inputs, STORED, TRAINING)
        for moments in training_pass.moments:
            sweep.sums.setdefault(moments.path, MomentSums()).add(moments)
            sweep.halves[sweep.count % 2].setdefault(moments.path, MomentSums()).add(moments)
        _add_figures(sweep.inference, stored_pass.figures)
        _add_figures(sweep.training, training_pass.figures)
        for (name, inferred), (_, trained) in zip(
            stored_pass.outputs, training_pass.outputs, strict=True
        ):
            totals = sweep.outputs.setdefault(name, OutputSums())
            totals.add_inference(inferred)
            totals.add_training(inferred, trained)
        sweep.kept = _keep(sweep.kept, stored_pass.outputs)
        sweep.fingerprints.append(_fingerprint(batch))
        if sweep.count == 0:
            sweep.notes += _batch_dependence(runner, batch, stored_pass, sweep.outputs)
        _add_metrics(sweep.metrics, STORED, stored_pass, batch)
        _add_metrics(sweep.metrics, TRAINING, training_pass, batch)
        sweep.count += 1
        sweep.samples += batch.size
        progress("inference and training mode", sweep.count)
    return sweep


def _reestimated_sweep(
    runner: Runner,
    batches: BatchSource,
    sweep: _Sweep,
    targets: Mapping[str, PopulationEstimate],
    split: bool,
    progress: Progress,
) -> None:
    """Inference with re-estimated statistics, cross-fitted, compared with the first sweep's
    stored-statistics outputs (kept, or computed again when they were too many)."""
    done = 0
    moved = 0
    lone = sweep.batch if split else None
    for half, estimates in _cross_fitted(targets, sweep.halves, 2 if split else sweep.count):
        runner.use_estimates({path: (e.mean, e.variance) for path, e in estimates.items()})
        for number, rows, batch in _batches_for(half, batches, lone):
            # The same batch as the first sweep's, or the data gave another this time.
            same = lone is not None or (
                number < len(sweep.fingerprints)
                and sweep.fingerprints[number] == _fingerprint(batch)
            )
            moved += not same
            if sweep.kept is not None and same:
                [estimated] = runner.run(batch.inputs, ESTIMATED)
                before = [values[rows] for values in sweep.kept[number]]
            else:
                stored_pass, estimated = runner.run(batch.inputs, STORED, ESTIMATED)
                before = [values for _, values in stored_pass.outputs]
            for values, (name, after) in zip(before, estimated.outputs, strict=True):
                sweep.outputs[name].add_estimated(values, after)
            _add_metrics(sweep.metrics, ESTIMATED, estimated, batch)
            done += 1
            progress("re-estimated statistics", done)
    if moved:
        sweep.notes.append(
            f"the data gave other batches on its second pass ({moved} of {done}: a dataset that "
            "reshuffles on every pass): each was compared with its own stored-statistics "
            "outputs, but its samples may have helped estimate the statistics it ran with, so "
            "what re-estimating would change (BN015) may be overstated"
        )


def _fingerprint(batch: Batch) -> int:
    """A checksum of a batch's inputs: the same batch, given again, has the same."""
    found = 0
    for array in batch.inputs:
        found = zlib.crc32(np.ascontiguousarray(array).tobytes(), found)
    return found


def _assemble(
    runner: Runner,
    sweep: _Sweep,
    populations: Mapping[str, PopulationEstimate],
    targets: Mapping[str, PopulationEstimate],
    split: bool,
    untouched: Mapping[str, bool],
    real: bool,
) -> Measured:
    notes = list(sweep.notes)
    if real and sweep.count == 1 and split:
        notes.append(
            "one batch: the noise of its statistics is unknown, so staleness (BN014) is not "
            "judged; what re-estimating would change (BN015) is measured on its two halves, each "
            "with statistics estimated from the other"
        )
    elif real and sweep.count == 1:
        notes.append(
            "one batch: the noise of its statistics is unknown, so staleness (BN014) and what "
            "re-estimating would change (BN015) are not judged; give more samples than "
            "--batch-size"
        )
    seen = set(sweep.inference) | set(sweep.training) | set(sweep.sums)
    silent = [layer.path for layer in runner.layers if layer.path not in seen]
    if silent:
        notes.append(
            f"{len(silent)} BatchNorm layer(s) did not run or could not be observed: "
            + ", ".join(silent[:5])
        )
    metric = _metric(sweep.metrics, list(sweep.outputs), notes)
    if not runner.layers:
        notes.append(
            "no BatchNorm layer, so no training mode to compare with (an export may fold them "
            "into the layers before them): nothing here depends on moving statistics; "
            "--fail-under METRIC=VALUE gates on the metric"
        )
        if metric is not None:
            metric = replace(metric, training=None)  # no batch-statistics mode to run
    return Measured(
        split_batch=split,
        # Without BatchNorm layers there is no batch-statistics mode to compare with.
        modes=(INFERENCE, TRAINING_MODE) if runner.layers else (INFERENCE,),
        outputs=tuple(
            totals.measurement(
                name, bool(runner.layers), bool(targets), metric if index == 0 else None
            )
            for index, (name, totals) in enumerate(sweep.outputs.items())
        ),
        layers=tuple(
            _layer_measurement(layer, sweep, populations, targets, untouched)
            for layer in runner.layers
            if layer.path in seen
        ),
        notes=tuple(notes),
        samples=sweep.samples,
        batches=sweep.count,
    )


def _layer_measurement(
    layer: LayerInfo,
    sweep: _Sweep,
    populations: Mapping[str, PopulationEstimate],
    targets: Mapping[str, PopulationEstimate],
    untouched: Mapping[str, bool],
) -> LayerMeasurement:
    """One layer's measurement; a figure its runtime could not observe is NaN."""
    inference = sweep.inference.get(layer.path)
    training = sweep.training.get(layer.path)
    calls = (
        inference.calls
        if inference
        else (sweep.sums[layer.path].calls if layer.path in sweep.sums else 1)
    )
    return LayerMeasurement(
        path=layer.path,
        calls=max(1, calls // max(sweep.count, 1)),
        trainable=layer.trainable,
        epsilon=layer.epsilon,
        moving_mean=layer.moving_mean,
        moving_variance=layer.moving_variance,
        inference_spread=inference.spread / inference.calls if inference else math.nan,
        inference_rms=inference.rms / inference.calls if inference else math.nan,
        inference_nonfinite=inference.nonfinite if inference else 0,
        moving_stats_error=inference.error if inference else math.nan,
        training_spread=training.spread / training.calls if training else math.nan,
        training_rms=training.rms / training.calls if training else math.nan,
        population=populations.get(layer.path),
        reestimated=layer.path in targets,
        momentum=layer.momentum,
        untouched=untouched.get(layer.path, False),
    )


def _cross_fitted(
    targets: Mapping[str, PopulationEstimate],
    halves: tuple[dict[str, MomentSums], dict[str, MomentSums]],
    batches: int,
) -> list[tuple[int | None, dict[str, PopulationEstimate]]]:
    """The statistics each half of the batches (even, odd) is measured with: those estimated
    from the other half. Statistics estimated from some data fit that data by construction, so
    measured on it they promise more than recalibrating gives on new data (on a few hundred
    samples, more than the thresholds of BN015). A lone batch split in two has its halves'
    moments in ``halves``; one too small to split is measured with its own statistics
    (``None``), and BN015 does not judge it."""
    if not targets:
        return []
    if batches < 2:
        return [(None, dict(targets))]
    return [
        (
            half,
            {
                path: halves[1 - half][path].population() if path in halves[1 - half] else whole
                for path, whole in targets.items()
            },
        )
        for half in (0, 1)
    ]


#: Fewest samples in each half of a lone batch for its halves to re-estimate each other.
MIN_HALF_BATCH = 16


def _splits(batch: Batch) -> bool:
    return batch.size >= 2 * MIN_HALF_BATCH


def _batches_for(
    half: int | None, batches: BatchSource, split: Batch | None
) -> Iterator[tuple[int, slice, Batch]]:
    """What runs with one half's estimates: the batches of the other parity (all of them for
    ``None``), or that half of the ``split`` lone batch; each with its number and rows."""
    if split is not None:
        assert half is not None
        rows = _half_rows(split, half)
        yield 0, rows, _rows_of(split, rows)
        return
    for number, batch in enumerate(batches()):
        if half is None or number % 2 == half:
            yield number, slice(None), batch


def _half_rows(batch: Batch, half: int) -> slice:
    cut = batch.size // 2
    return slice(0, cut) if half == 0 else slice(cut, None)


def _rows_of(batch: Batch, rows: slice) -> Batch:
    labels = None if batch.labels is None else batch.labels[rows]
    return Batch([array[rows] for array in batch.inputs], labels)


def _half_moments(
    runner: Runner, batch: Batch
) -> tuple[dict[str, MomentSums], dict[str, MomentSums]]:
    """Each half of a lone batch's per-layer moments, from a training-mode pass over it alone:
    with one batch there is no other batch to estimate its statistics from."""
    halves: tuple[dict[str, MomentSums], dict[str, MomentSums]] = ({}, {})
    for half in (0, 1):
        [training_pass] = runner.run(_rows_of(batch, _half_rows(batch, half)).inputs, TRAINING)
        for moments in training_pass.moments:
            halves[half].setdefault(moments.path, MomentSums()).add(moments)
    return halves


def _keep(
    kept: list[list[np.ndarray]] | None, outputs: list[tuple[str, np.ndarray]]
) -> list[list[np.ndarray]] | None:
    """Keep a batch's stored-statistics outputs for the second sweep, within the budget."""
    if kept is None:
        return None
    kept.append([values for _, values in outputs])
    held = sum(values.size for batch in kept for values in batch)
    return kept if held <= KEEP_OUTPUT_VALUES else None


def _add_figures(totals: dict[str, _LayerFigures], figures: Iterable[CallFigures]) -> None:
    for figure in figures:
        totals.setdefault(figure.path, _LayerFigures()).add(figure)


def _add_metrics(metrics: dict[str, MetricSums], key: str, result: Any, batch: Batch) -> None:
    if batch.labels is not None and len(result.outputs) == 1:
        metrics[key].add(result.outputs[0][1], batch.labels)


def _metric(
    metrics: dict[str, MetricSums], names: Sequence[str], notes: list[str]
) -> Metric | None:
    stored = metrics[STORED]
    if stored.samples == 0 or stored.name is None:
        return None
    if len(names) != 1:
        notes.append("labels need a model with one output: no metric measured")
        return None
    estimated = metrics[ESTIMATED]
    interval = None
    if estimated.samples:
        # The re-estimated sweep runs the even batches, then the odd ones (cross-fitting); a
        # lone batch split in two runs as its two halves, in order.
        count = len(stored.per_batch)
        order = None
        if len(estimated.per_batch) == count > 1:
            order = [*range(0, count, 2), *range(1, count, 2)]
        before, after = stored.values(order), estimated.values()
        if before.size == after.size:
            interval = uncertainty.paired_change(before, after)
    return Metric(
        name=stored.name,
        stored=float(stored.value() or 0.0),
        reestimated=estimated.value(),
        training=metrics[TRAINING].value(),
        change=interval,
    )


def _batch_dependence(
    runner: Runner, batch: Batch, whole: Any, outputs: dict[str, OutputSums]
) -> list[str]:
    fixed = runner.fixed_batch

    def run(halves: list[np.ndarray]) -> Sequence[tuple[str, np.ndarray]]:
        if fixed is not None and len(halves[0]) < batch.size:
            # A graph that takes one batch size only: the first half with other companions
            # (itself again) in a batch of the same size, where inference must not tell the
            # difference.
            halves = [
                np.concatenate([half, half, half[: batch.size - 2 * len(half)]]) for half in halves
            ]
        # The same compiled call as the whole batch's (its training pass is not used).
        return runner.run(halves, STORED, TRAINING)[0].outputs

    return _half_alone(batch, whole.outputs, run, outputs)


def _half_alone(
    batch: Batch,
    within: Sequence[tuple[str, np.ndarray]],
    run: Callable[[list[np.ndarray]], Sequence[tuple[str, np.ndarray]]],
    outputs: dict[str, OutputSums],
) -> list[str]:
    """BN016's measurement: each output of the first half of ``batch`` run alone (``run``)
    against the same rows within the whole batch (``within``), relative to their norm."""
    count = batch.size // 2
    if count < 1:
        return ["a batch of one sample cannot show batch-dependent inference (BN016)"]
    alone = run([array[:count] for array in batch.inputs])
    for (name, whole), (_, by_itself) in zip(within, alone, strict=True):
        by_itself = by_itself[:count]
        outputs[name].half_dependence = _ratio(
            _squared_norm(by_itself - whole[:count]), _squared_norm(whole[:count])
        )
    # The same batch again: a model that draws random numbers at inference differs from itself,
    # and the comparison above measures that too.
    again = run(list(batch.inputs))
    drift = max(
        (
            _ratio(_squared_norm(second - first), _squared_norm(first))
            for (_, first), (_, second) in zip(within, again, strict=True)
        ),
        default=0.0,
    )
    if drift > 1e-6:
        return [
            f"two runs of the same batch give outputs {drift:.3g} apart (relative): the model "
            "draws random numbers at inference (augmentation or dropout left on, in an export?), "
            "and batch dependence (BN016) includes that randomness"
        ]
    return []


def measure_savedmodel(
    subject: SavedModelSubject, batches: BatchSource, progress: Progress = lambda _, __: None
) -> Measured:
    """Outputs only: the layers inside a SavedModel are not visible."""
    snapshot = keras_model.Snapshot(subject.variables)
    outputs: dict[str, OutputSums] = {}
    metrics = {key: MetricSums() for key in (STORED, TRAINING)}
    notes: list[str] = []
    count = samples = 0
    try:
        for batch in batches():
            inferred = subject.run(batch.inputs, training=False)
            trained = None
            if subject.can_train:
                trained = subject.run(batch.inputs, training=True)
                # Training mode updated the moving statistics: later batches must not see that.
                snapshot.restore()
            for index, (name, values) in enumerate(inferred):
                totals = outputs.setdefault(name, OutputSums())
                totals.add_inference(values)
                if trained is not None:
                    totals.add_training(values, trained[index][1])
            if count == 0:
                notes += _half_alone(
                    batch,
                    inferred,
                    lambda inputs: subject.run(inputs, training=False),
                    outputs,
                )
            if batch.labels is not None and len(inferred) == 1:
                metrics[STORED].add(inferred[0][1], batch.labels)
                if trained is not None:
                    metrics[TRAINING].add(trained[0][1], batch.labels)
            count += 1
            samples += batch.size
            progress("inference and training mode", count)
    finally:
        snapshot.restore()
    metrics[ESTIMATED] = MetricSums()
    metric = _metric(metrics, list(outputs), notes)
    modes = (INFERENCE, TRAINING_MODE) if subject.can_train else (INFERENCE,)
    return Measured(
        modes=modes,
        outputs=tuple(
            totals.measurement(name, subject.can_train, False, metric if index == 0 else None)
            for index, (name, totals) in enumerate(outputs.items())
        ),
        notes=tuple(notes),
        samples=samples,
        batches=count,
    )
