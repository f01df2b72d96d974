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
from dataclasses import dataclass, field

import numpy as np

from bncheck import verdict
from bncheck.errors import BncheckError
from bncheck.findings import Finding, Report
from bncheck.model import BNLayer

#: A layer's moving mean and moving variance.
MovingStats = tuple[np.ndarray, np.ndarray]

#: Static rules whose findings repeat what the movement check says about the same layer: the
#: statistics never left their initial values (BN001), momentum 1.0 or more (BN008).
MOVEMENT_RULES = frozenset({"BN001", "BN008"})

#: Layer paths a message names before it abbreviates.
NAMED_LAYERS = 3

#: Inference-mode outputs off by less than this many standard deviations (RMS over channels) are
#: not stale, whatever the noise: the smallest disagreement worth a warning.
MIN_DISAGREEMENT = 0.3

#: A disagreement counts only beyond this many times what batch noise alone explains.
NOISE_FACTOR = 3.0

#: Layers beyond noise are stale together when the root of the sum of their squared
#: disagreements passes this: errors compound through the network. Calibrated on the digits: MLPs
#: at 0.37 and 0.61 lost 0.7 and 1 point in inference mode; CNNs at 0.77 to 1.33 fell from 96-99%
#: in training mode to 10-22% in inference mode (one at 0.69, at 26%, stays below).
MODEL_DISAGREEMENT = 0.65

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


@dataclass(frozen=True)
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
    """Layers whose moving statistics do not fit the inputs of recent batches beyond noise."""
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
                f"({_named(self.stuck)})"
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
                f"freeze a layer ({_named(paths)})"
            )
        lines += _ignored_lines(self.ignored_momentum)
        lines += _stale_lines(self.stale)
        for finding in self.findings:
            where = f" at {finding.layer}" if finding.layer else ""
            lines.append(f"{finding.rule} {finding.name}{where}: {finding.message}")
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


@dataclass(frozen=True)
class MomentumChange:
    """A change of a layer's ``momentum`` attribute, seen by the guard during training."""

    step: int
    """Training steps counted when the guard saw the new value."""
    before: float | None
    """The momentum before the change."""
    stats: MovingStats
    """The moving statistics when the guard saw the change: what later movement is measured
    against."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Staleness:
    """How well one layer's moving statistics fit the inputs of recent training batches."""

    layer: str
    """The layer's path."""
    disagreement: float
    """How far inference-mode outputs are from training-mode outputs on those inputs: the RMS
    over channels, in standard deviations of the layer's output."""
    noise: float
    """The disagreement that batch-to-batch noise alone explains."""
    batches: int
    """The recent batches measured."""
    momentum: float
    """The layer's momentum."""
    steps: int
    """Training steps since the snapshot."""
    start_weight: float
    """The weight the statistics still give their values at the snapshot: ``momentum ** steps``."""
    warm_up: bool = field(default=False)
    """Whether the starting values' remaining weight explains the disagreement: without them the
    statistics would fit."""

    @property
    def stale(self) -> bool:
        """Whether the disagreement is beyond noise and not negligible; whether it matters is
        judged over all layers together (``GuardResult.stale``)."""
        return _beyond_noise(self.disagreement, self.noise)


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
    which each layer's fit with recent batches is measured. Mid-training (``final`` false) the
    starting values' remaining weight is discounted: the warm-up fades by itself.
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
        stale=_stale(measured),
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
    count = len(batch_means)
    # One batch's own disagreement with the others: what a single batch's noise is; the moving
    # average (about (1 + m) / (1 - m) batches) and the pool of recent batches have less.
    single = np.sqrt(
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
    noise = float(single * np.sqrt(1.0 / count + (1.0 - momentum) / (1.0 + momentum)))
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
    measured = disagreement(current, batch_means, batch_variances, epsilon)
    warm_up = bool(
        final
        and debiased is not None
        and _beyond_noise(measured, noise)
        and not _beyond_noise(
            disagreement((debiased[0], debiased[1]), batch_means, batch_variances, epsilon), noise
        )
    )
    return Staleness(
        layer=layer.path,
        disagreement=measured,
        noise=noise,
        batches=count,
        momentum=momentum,
        steps=steps,
        start_weight=weight,
        warm_up=warm_up or (final and debiased is None and _beyond_noise(measured, noise)),
    )


def _stale(measured: Sequence[Staleness]) -> tuple[Staleness, ...]:
    beyond = [item for item in measured if item.stale]
    total = float(np.sqrt(sum(item.disagreement**2 for item in beyond)))
    return tuple(beyond) if total > MODEL_DISAGREEMENT else ()


def _beyond_noise(disagreement: float, noise: float) -> bool:
    return disagreement > max(MIN_DISAGREEMENT, NOISE_FACTOR * noise)


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


def _stale_lines(stale: Sequence[Staleness]) -> list[str]:
    lines = []
    for warm_up in (True, False):
        group = [item for item in stale if item.warm_up is warm_up]
        if not group:
            continue
        worst = max(group, key=lambda item: item.disagreement)
        if warm_up:
            cause = (
                f"after {worst.steps} steps at momentum={worst.momentum:g} they still give "
                f"{worst.start_weight:.0%} weight to their starting values: the run is too short "
                "for this momentum; train longer or use a lower momentum (0.9)"
            )
        else:
            window = round((1.0 + worst.momentum) / (1.0 - worst.momentum))
            cause = (
                f"the network changed faster than momentum={worst.momentum:g} averages (about "
                f"the last {window} batches); let the learning rate decay at the end of training"
            )
        lines.append(
            f"the moving statistics of {_layers(len(group))} do not fit the inputs of the last "
            f"{worst.batches} training batches: inference-mode outputs are off by up to "
            f"{worst.disagreement:.2f} standard deviations (RMS) where batch noise explains "
            f"{worst.noise:.2f}; {cause}; or re-estimate them after training (bncheck "
            f"recalibrate MODEL --data DATA) ({_named(item.layer for item in group)})"
        )
    return lines


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


def _named(paths: Iterable[str]) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:NAMED_LAYERS])
    return shown if len(paths) <= NAMED_LAYERS else f"{shown} and {len(paths) - NAMED_LAYERS} more"
