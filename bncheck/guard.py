"""What the training-time guard judges, without Keras: did the moving statistics move, as the
configured momentum allows, and do they fit what the layers now see?

``bncheck.keras`` takes the snapshots and runs the checks during training; this module compares
a model's BatchNorm layers now with a snapshot taken when training began, and words the verdict.
A trainable layer whose statistics stayed exactly where they were after training steps was
never run in training mode; a momentum of 1.0 or more keeps them fixed whatever the mode, so
statistics that move under it show that the momentum training uses is not the configured one (a
compiled train step keeps the value it was traced with); a frozen layer (``trainable=False``) is
not expected to move at all.

Staleness is measured from the statistics alone: Keras updates ``moving = m * moving + (1 - m) *
batch`` at every step, so the moving statistics read at consecutive steps give back each step's
batch statistics exactly, the layer inputs of recent batches. Their spread from batch to batch
is the noise a comparison has to beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np

from bncheck import verdict
from bncheck.errors import BncheckError
from bncheck.findings import Finding, Report
from bncheck.model import KERAS_WORDS, BNLayer, Vocabulary
from bncheck.records import record

#: A layer's moving mean and moving variance.
MovingStats = tuple[np.ndarray, np.ndarray]

#: Static rules whose findings repeat what the movement check says about the same layer: the
#: statistics never left their initial values (BN001), momentum 1.0 or more (BN008).
MOVEMENT_RULES = frozenset({"BN001", "BN008"})

#: Layer paths a message names before it abbreviates.
NAMED_LAYERS = 3

#: Inference-mode outputs off by less than this many standard deviations (RMS over channels)
#: never matter: a floor for layers whose batches all have the same statistics (full-batch
#: training), where noise is zero.
NEGLIGIBLE = 0.05

#: A disagreement counts only beyond this many times what the estimate's own noise explains.
NOISE_FACTOR = 3.0

#: A disagreement matters beyond this many times one batch's own disagreement with the others:
#: training normalises every step with its own batch's statistics, so the network is used to
#: that much; several times more, it meets inputs it never met. Calibrated on a matrix of digits
#: models (docs/guard.md): stale fits that lost 8 to 87 points in inference mode measured 5 to 64
#: times their spread, healthy ones (dropout, augmentation, momentum 0.9 and 0.99, batch 8 to
#: 128) at most 3.1 times.
SPREAD_FACTOR = 4.0

#: Mid-training, the statistics are judged once the starting values keep less than this weight
#: (``momentum ** steps``); before that the warm-up dominates and fades by itself.
WARM_UP_WEIGHT = 0.5


class BatchNormGuardError(BncheckError):
    """Raised by the guard with ``on_problem="raise"``; ``str(error)`` is the guard's message."""

    def __init__(self, result: GuardResult) -> None:
        super().__init__(result.message)
        self.result = result
        """What the check found."""


class BatchNormWarning(UserWarning):
    """Issued by the guard with ``on_problem="warn"`` or ``"stop"``; filter it with the
    ``warnings`` module like any other warning."""


@record
class GuardResult:
    """What one check of the guard found."""

    steps: int | None
    """Training steps counted since the snapshot; ``None`` when the steps were not counted."""
    stuck: tuple[str, ...]
    """Trainable layers whose moving statistics have not moved although their momentum lets
    them: they never ran in training mode."""
    fixed_by_momentum: tuple[str, ...]
    """Trainable layers whose momentum (1.0 or more) keeps their statistics from moving."""
    frozen: tuple[str, ...]
    """Layers with ``trainable=False``: they run in inference mode, so their statistics are not
    expected to move. Not a problem."""
    moved: tuple[str, ...]
    """Trainable layers whose moving statistics moved."""
    findings: tuple[Finding, ...]
    """Findings of the static rules at or above the configuration's ``fail-on``, less those
    that repeat ``stuck``, ``fixed_by_momentum`` and ``ignored_momentum`` (BN001 and BN008 on
    those layers)."""
    report: Report
    """The whole report of ``check_model`` on the model at the time of the check."""
    ignored_momentum: tuple[IgnoredMomentum, ...] = ()
    """Layers whose statistics moved (or stayed) against what their configured momentum
    allows: training runs with another momentum than the layer's attribute says."""
    stale: tuple[Staleness, ...] = ()
    """Layers whose moving statistics do not fit the inputs of recent batches beyond noise and
    beyond what one batch's own statistics differ from the others' (``stale_layers``); judged
    as training ends (the PyTorch guard: at every check)."""
    measured: tuple[Staleness, ...] = ()
    """Every layer whose fit with recent batches this check measured, stale or not."""

    @property
    def problem(self) -> bool:
        """Whether anything needs fixing."""
        return bool(
            self.stuck
            or self.fixed_by_momentum
            or self.ignored_momentum
            or self.stale
            or self.findings
        )

    @property
    def keys(self) -> frozenset[tuple[str, str | None]]:
        """Each problem as (kind or rule ID, layer), to tell a new problem from one already
        reported by an earlier check."""
        return frozenset(
            [("stuck", path) for path in self.stuck]
            + [("momentum", path) for path in self.fixed_by_momentum]
            + [("ignored momentum", ignored.layer) for ignored in self.ignored_momentum]
            + [("stale", stale.layer) for stale in self.stale]
            + [(finding.rule, finding.layer) for finding in self.findings]
        )

    @property
    def message(self) -> str:
        """The problems, one cause per line, each naming the cause and what to do; empty when
        there is no problem."""
        if not self.problem:
            return ""
        lines = []
        if self.stuck:
            when = f"after {self.steps} steps" if self.steps else "since the guard started"
            line = (
                f"{when} the moving statistics of {_layers(len(self.stuck))} have not moved: "
                f"does your training loop call the model with training=True? "
                f"({named_paths(self.stuck)})"
            )
            if self.moved:
                line += (
                    f"; {len(self.moved)} other trainable layer(s) did move, so look for the part "
                    "of the model that runs with training=False or does not run at all"
                )
            lines.append(line)
        for momentum, paths in self._by_momentum().items():
            effect = "keeps them fixed" if momentum == 1.0 else "makes them diverge"
            lines.append(
                f"the moving statistics of {_layers(len(paths))} cannot move: "
                f"momentum={momentum} {effect}; use momentum 0.99, and trainable=False to "
                f"freeze a layer ({named_paths(paths)})"
            )
        lines += _ignored_lines(self.ignored_momentum)
        lines += stale_lines(self.stale, KERAS_GUARD_WORDS)
        lines += finding_lines(self.findings)
        if self.frozen:
            lines.append(
                f"({_layers(len(self.frozen))} frozen with trainable=False: not expected to "
                "move; not a problem)"
            )
        return "\n".join(lines)

    def _by_momentum(self) -> dict[float, list[str]]:
        layers = {layer.path: layer for layer in _layers_of(self.report)}
        groups: dict[float, list[str]] = {}
        for path in self.fixed_by_momentum:
            momentum = layers[path].momentum
            assert momentum is not None  # only layers with a known momentum are fixed by it
            groups.setdefault(momentum, []).append(path)
        return groups


@record
class MomentumChange:
    """A change of a layer's ``momentum`` attribute, seen by the guard during training."""

    step: int
    """Training steps counted when the guard saw the new value."""
    before: float | None
    """The momentum before the change."""
    stats: MovingStats
    """The moving statistics when the guard saw the change: what later movement is measured
    against."""


@record
class IgnoredMomentum:
    """A layer whose statistics contradict its configured momentum."""

    layer: str
    """The layer's path."""
    configured: float
    """The layer's ``momentum`` attribute now."""
    before: float | None
    """The momentum before the guard saw it change; ``None`` when it was already set when the
    guard started."""
    since: int
    """The step from which the movement (or the lack of it) was measured."""
    moved_by: float
    """The largest change of a moving mean or variance since ``since``: above 0 under a
    momentum of 1.0 or more, 0 under a lower one that followed 1.0."""


#: Why statistics do not fit: starting values that still weigh too much (a run too short for
#: its momentum), a network that changed faster than the momentum averages, or statistics that
#: were not updated while the batches ran (PyTorch modules run in eval mode).
Cause = Literal["warm-up", "lag", "not updated"]


@record
class Staleness:
    """How well one layer's moving statistics fit the inputs of recent training batches."""

    layer: str
    """The layer's path."""
    disagreement: float
    """How far inference-mode outputs are from training-mode outputs on those inputs: the RMS
    over channels, in standard deviations of the layer's output."""
    noise: float
    """The disagreement that the estimate's noise alone explains."""
    spread: float
    """One recent batch's own disagreement with the others (RMS over the batches): the
    perturbation of its normalisation that the network meets at every training step."""
    batches: int
    """The recent batches measured."""
    momentum: float | None
    """The layer's momentum in Keras's convention (the weight the old statistics keep);
    ``None`` for a cumulative average (PyTorch's ``momentum=None``)."""
    steps: int
    """Training steps since the snapshot."""
    start_weight: float
    """The weight the statistics still give their values at the snapshot: ``momentum ** steps``."""
    cause: Cause = "lag"
    """Why they do not fit, when they do not."""

    @property
    def warm_up(self) -> bool:
        """Whether the starting values' remaining weight explains the disagreement: without
        them the statistics would fit."""
        return self.cause == "warm-up"

    @property
    def stale(self) -> bool:
        """Whether the disagreement is beyond the estimate's noise and beyond what the network
        meets at every training step (``SPREAD_FACTOR`` times one batch's spread)."""
        return _beyond_noise(self.disagreement, self.noise, self.spread)


def snapshot(layers: Iterable[BNLayer]) -> dict[str, MovingStats]:
    """Each layer's moving statistics by path."""
    return {layer.path: (layer.moving_mean, layer.moving_variance) for layer in layers}


def judge(
    before: Mapping[str, MovingStats],
    report: Report,
    steps: int | None,
    *,
    changes: Mapping[str, MomentumChange] | None = None,
    window: Sequence[Mapping[str, MovingStats]] = (),
    final: bool = False,
) -> GuardResult:
    """Compare the layers of ``report`` (``check_model``'s, now) with the snapshot ``before``.

    A layer built after the snapshot is compared with its initial values; one whose initializers
    are not constants (so that its starting point is unknown) is left out of the movement check.
    ``changes`` are the momentum changes seen during training, by layer path (the latest each);
    ``window`` the moving statistics read after consecutive training steps, ending now, from
    which each layer's fit with recent batches is measured. Stale statistics are a problem only
    as training ends (``final``): mid-training they are measured (``GuardResult.measured``, the
    starting values' remaining weight discounted) but not reported, since a network that still
    learns fast outruns any slow average for a while, and the fit as training ends is what
    inference gets.
    """
    changes = changes or {}
    stuck: list[str] = []
    fixed: list[str] = []
    frozen: list[str] = []
    moved: list[str] = []
    ignored: list[IgnoredMomentum] = []
    measured: list[Staleness] = []
    for layer in _layers_of(report):
        if layer.trainable is False:
            frozen.append(layer.path)
            continue
        start = before.get(layer.path) or _initial_stats(layer)
        change = changes.get(layer.path)
        contradiction = _contradiction(layer, start, change, steps)
        if contradiction is not None:
            ignored.append(contradiction)
        elif start is None:
            continue
        elif _movement(layer, start) == 0.0:
            fixed_now = verdict.momentum_holds_statistics(layer.keras_momentum)
            (fixed if fixed_now else stuck).append(layer.path)
        else:
            moved.append(layer.path)
            if change is None and start is not None and steps:
                fit = staleness(layer, window, start, steps, final)
                if fit is not None:
                    measured.append(fit)
    covered = set(stuck) | set(fixed) | {item.layer for item in ignored}
    findings = tuple(
        finding
        for finding in report.failing()
        if not (finding.rule in MOVEMENT_RULES and finding.layer in covered)
    )
    return GuardResult(
        steps=steps,
        stuck=tuple(stuck),
        fixed_by_momentum=tuple(fixed),
        frozen=tuple(frozen),
        moved=tuple(moved),
        findings=findings,
        report=report,
        ignored_momentum=tuple(ignored),
        stale=stale_layers(measured) if final else (),
        measured=tuple(measured),
    )


def _contradiction(
    layer: BNLayer, start: MovingStats | None, change: MomentumChange | None, steps: int | None
) -> IgnoredMomentum | None:
    """The layer, when its statistics moved (or stayed) against what its momentum allows."""
    momentum = layer.momentum
    if momentum is None:
        return None
    if change is not None:
        if steps is not None and steps <= change.step:
            return None  # no training step since the change yet
        reference, since, previous = change.stats, change.step, change.before
    elif start is not None and momentum >= 1.0:
        reference, since, previous = start, 0, None
    else:
        return None
    moved_by = _movement(layer, reference)
    if momentum >= 1.0 and moved_by > 0.0:
        return IgnoredMomentum(layer.path, momentum, previous, since, moved_by)
    if momentum < 1.0 and previous is not None and previous >= 1.0 and moved_by == 0.0:
        return IgnoredMomentum(layer.path, momentum, previous, since, 0.0)
    return None


def _movement(layer: BNLayer, start: MovingStats) -> float:
    """The largest change of the layer's moving mean or variance since ``start``."""
    mean = np.abs(np.asarray(layer.moving_mean, "float64") - np.asarray(start[0], "float64"))
    variance = np.abs(
        np.asarray(layer.moving_variance, "float64") - np.asarray(start[1], "float64")
    )
    largest = max(float(np.max(mean, initial=0.0)), float(np.max(variance, initial=0.0)))
    return largest if np.isfinite(largest) else float("inf")


def batch_statistics(
    window: Sequence[MovingStats], momentum: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean and variance of each step's batch, one row per step between the reads of
    ``window`` (moving statistics after consecutive steps), undoing Keras's update
    ``moving = momentum * moving + (1 - momentum) * batch``; ``None`` when the window holds
    fewer than two batches, or the statistics did not move in it."""
    if len(window) < 3 or not 0.0 <= momentum < 1.0:
        return None
    means = np.array([stats[0] for stats in window], "float64")
    variances = np.array([stats[1] for stats in window], "float64")
    if not (np.isfinite(means).all() and np.isfinite(variances).all()):
        return None
    if not np.any(np.diff(means, axis=0)) and not np.any(np.diff(variances, axis=0)):
        return None
    batch_means = means[:-1] + np.diff(means, axis=0) / (1.0 - momentum)
    batch_variances = np.maximum(variances[:-1] + np.diff(variances, axis=0) / (1.0 - momentum), 0)
    return batch_means, batch_variances


def disagreement(
    moving: MovingStats, batch_means: np.ndarray, batch_variances: np.ndarray, epsilon: float
) -> float:
    """How far the outputs of a layer normalising with ``moving`` are from its training-mode
    outputs, on inputs whose batches had these statistics: the RMS over channels of the
    difference, in standard deviations of the training-mode output.

    For inputs of mean ``p`` and variance ``v`` normalised by ``(m, s)`` in inference mode and by
    the batch's own ``(p, w)`` in training mode, the squared difference averages
    ``((p - m) / a)**2 + v * (1 / a - 1 / c)**2`` with ``a = sqrt(s + eps)``, ``c = sqrt(w + eps)``.
    """
    pooled_mean = batch_means.mean(axis=0)
    within = batch_variances.mean(axis=0)
    pooled_variance = within + batch_means.var(axis=0)
    a = np.sqrt(np.maximum(np.asarray(moving[1], "float64"), 0.0) + epsilon)
    c = np.sqrt(within + epsilon)
    squared = ((pooled_mean - np.asarray(moving[0], "float64")) / a) ** 2 + pooled_variance * (
        1.0 / a - 1.0 / c
    ) ** 2
    return float(np.sqrt(np.mean(squared)))


def measure_fit(
    moving: MovingStats,
    batch_means: np.ndarray,
    batch_variances: np.ndarray,
    epsilon: float,
    averaged: float,
) -> tuple[float, float, float]:
    """The fit of ``moving`` with recent batches (one row of means and variances per batch, as
    training mode normalises them): the disagreement, the noise that explains, and one batch's
    own disagreement with the others (the spread). ``averaged`` is about how many batches the
    moving statistics average (``(1 + m) / (1 - m)`` for Keras's momentum ``m``): their own
    noise adds to that of the pool of recent batches. Both guards judge with this."""
    count = len(batch_means)
    spread = np.sqrt(
        np.mean(
            [
                disagreement(
                    (batch_means[k], batch_variances[k]),
                    np.delete(batch_means, k, axis=0),
                    np.delete(batch_variances, k, axis=0),
                    epsilon,
                )
                ** 2
                for k in range(count)
            ]
        )
    )
    noise = float(spread * np.sqrt(1.0 / count + 1.0 / max(averaged, 1.0)))
    return disagreement(moving, batch_means, batch_variances, epsilon), noise, float(spread)


def staleness(
    layer: BNLayer,
    window: Sequence[Mapping[str, MovingStats]],
    start: MovingStats,
    steps: int,
    final: bool,
) -> Staleness | None:
    """How well the layer's moving statistics fit the batches of ``window``; ``None`` when the
    window does not measure it, or (mid-training) while the warm-up still dominates."""
    momentum, epsilon = layer.momentum, layer.epsilon
    reads = [stats[layer.path] for stats in window if layer.path in stats]
    if momentum is None or epsilon is None or len(reads) != len(window):
        return None
    batches = batch_statistics(reads, momentum)
    if batches is None:
        return None
    batch_means, batch_variances = batches
    weight = momentum**steps
    current = (np.asarray(reads[-1][0], "float64"), np.asarray(reads[-1][1], "float64"))
    debiased = None
    if weight < WARM_UP_WEIGHT:
        debiased = tuple(
            (now - weight * np.asarray(then, "float64")) / (1.0 - weight)
            for now, then in zip(current, start, strict=True)
        )
    if not final:
        if debiased is None:
            return None
        current = (debiased[0], debiased[1])
    averaged = (1.0 + momentum) / (1.0 - momentum)
    measured, noise, spread = measure_fit(current, batch_means, batch_variances, epsilon, averaged)
    cause: Cause = "lag"
    if final and _beyond_noise(measured, noise, spread):
        if debiased is None:
            cause = "warm-up"
        else:
            unbiased = disagreement(
                (debiased[0], debiased[1]), batch_means, batch_variances, epsilon
            )
            if not _beyond_noise(unbiased, noise, spread):
                cause = "warm-up"
    return Staleness(
        layer=layer.path,
        disagreement=measured,
        noise=noise,
        spread=spread,
        batches=len(batch_means),
        momentum=momentum,
        steps=steps,
        start_weight=weight,
        cause=cause,
    )


def stale_layers(measured: Sequence[Staleness]) -> tuple[Staleness, ...]:
    """The layers whose statistics do not fit recent batches beyond noise, by the one rule both
    guards apply."""
    return tuple(item for item in measured if item.stale)


def _beyond_noise(disagreement: float, noise: float, spread: float) -> bool:
    return disagreement > max(NEGLIGIBLE, NOISE_FACTOR * noise, SPREAD_FACTOR * spread)


def _ignored_lines(ignored: Sequence[IgnoredMomentum]) -> list[str]:
    lines = []
    for item in ignored:
        if item.configured >= 1.0:
            was = (
                f"it was {_number(item.before)} before the guard saw it change at step {item.since}"
                if item.before is not None
                else "it was already set when the guard started"
            )
            lines.append(
                f"the moving statistics of {item.layer} moved by up to {item.moved_by:.3g} "
                f"since step {item.since} although momentum={_number(item.configured)} allows no "
                f"movement: the momentum change did not take effect ({was}); a compiled train "
                "step keeps the momentum it was traced with: call model.compile() again after "
                "changing momentum (or set it before compiling), and use trainable=False to "
                "freeze a layer's statistics"
            )
        else:
            lines.append(
                f"the moving statistics of {item.layer} have not moved since momentum was "
                f"changed from {_number(item.before)} to {_number(item.configured)} at step "
                f"{item.since}: the "
                "change did not take effect; a compiled train step keeps the momentum it was "
                "traced with: call model.compile() again after changing momentum"
            )
    return lines


@record
class GuardWords:
    """How a guard's messages name things in its framework."""

    statistics: str
    """The stored statistics as the user's code names them: ``the moving statistics``."""
    unit: str
    """What holds them: ``BatchNorm layer``, ``BatchNorm module``."""
    vocabulary: Vocabulary
    """The framework's words for modes and momentum."""
    re_estimate: str
    """How to re-estimate the statistics after training."""

    def units(self, count: int) -> str:
        return f"{count} {self.unit}{'' if count == 1 else 's'}"


KERAS_GUARD_WORDS = GuardWords(
    "the moving statistics", "BatchNorm layer", KERAS_WORDS, "bncheck recalibrate MODEL --data DATA"
)


def stale_lines(stale: Sequence[Staleness], words: GuardWords) -> list[str]:
    """One line per cause of stale statistics, in the framework's words; both guards use it."""
    lines = []
    for cause in ("warm-up", "lag", "not updated"):
        group = [item for item in stale if item.cause == cause]
        if not group:
            continue
        worst = max(group, key=lambda item: item.disagreement / max(item.spread, 1e-12))
        lines.append(
            f"{words.statistics} of {words.units(len(group))} do not fit the inputs of the last "
            f"{worst.batches} batches: {words.vocabulary.inference_mode} outputs are off by "
            f"{worst.disagreement:.2f} standard deviations (RMS), {_times(worst)} what one "
            f"batch's statistics differ from the others' ({worst.spread:.2f}), which is all "
            f"training accustoms the network to; {_cause(worst, words)}; or re-estimate them "
            f"after training ({words.re_estimate}) ({named_paths(item.layer for item in group)})"
        )
    return lines


def finding_lines(findings: Iterable[Finding]) -> list[str]:
    """The static rules' findings, one line each, as both guards list them."""
    return [
        f"{finding.rule} {finding.name}{f' at {finding.layer}' if finding.layer else ''}: "
        f"{finding.message}"
        for finding in findings
    ]


def _times(item: Staleness) -> str:
    if item.spread <= 0.0:
        return "beyond"
    return f"{item.disagreement / item.spread:.0f} times"


def _cause(item: Staleness, words: GuardWords) -> str:
    vocabulary = words.vocabulary
    if item.cause == "not updated":
        return (
            f"they ran these batches in {vocabulary.inference_mode} "
            f"({vocabulary.inference_call}), which leaves them as they were"
        )
    if item.momentum is None:
        return (
            "a cumulative average (momentum=None) weighs the first batches as much as the "
            "latest, and the network changed since; use a momentum "
            f"({vocabulary.momentum(0.9):g})"
        )
    shown = f"momentum={vocabulary.momentum(item.momentum):g}"
    if item.cause == "warm-up":
        return (
            f"after {item.steps} steps at {shown} they still give {item.start_weight * 100:.2g}% "
            "weight to their starting values: the run is too short for this momentum; train "
            f"longer or use momentum={vocabulary.momentum(0.9):g}"
        )
    window = round((1.0 + item.momentum) / (1.0 - item.momentum))
    return (
        f"the network changed faster than {shown} averages (about the last {window} "
        "batches); let the learning rate decay at the end of training"
    )


def _layers_of(report: Report) -> tuple[BNLayer, ...]:
    return tuple(
        layer
        for model in report.models
        if model.description is not None
        for layer in model.description.layers
    )


def _initial_stats(layer: BNLayer) -> MovingStats | None:
    mean, variance = layer.initial.moving_mean, layer.initial.moving_variance
    if mean is None or variance is None:
        return None
    current = np.asarray(layer.moving_mean)
    return np.full(current.shape, mean, current.dtype), np.full(
        current.shape, variance, current.dtype
    )


def _number(value: float | None) -> str:
    """A momentum as users write it: 1.0, 0.99."""
    return repr(float(value)) if value is not None else "unknown"


def _layers(count: int) -> str:
    return f"{count} BatchNorm layer{'' if count == 1 else 's'}"


def named_paths(paths: Iterable[str]) -> str:
    """The first ``NAMED_LAYERS`` paths, then how many more; both guards name layers so."""
    paths = [path or "(the model itself)" for path in paths]
    shown = ", ".join(paths[:NAMED_LAYERS])
    return shown if len(paths) <= NAMED_LAYERS else f"{shown} and {len(paths) - NAMED_LAYERS} more"
