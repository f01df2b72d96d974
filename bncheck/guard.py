"""What the training-time guard judges, without Keras: did the moving statistics move?

``bncheck.keras`` takes the snapshots and runs the checks during training; this module compares
a model's BatchNorm layers now with a snapshot taken when training began, and words the verdict.
A trainable layer whose statistics stayed exactly where they were after training steps was
never run in training mode; a momentum of 1.0 or more keeps them fixed whatever the mode; a
frozen layer (``trainable=False``) is not expected to move at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

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
    that repeat ``stuck`` and ``fixed_by_momentum`` (BN001 and BN008 on those layers)."""
    report: Report
    """The whole report of ``check_model`` on the model at the time of the check."""

    @property
    def problem(self) -> bool:
        """Whether anything needs fixing."""
        return bool(self.stuck or self.fixed_by_momentum or self.findings)

    @property
    def keys(self) -> frozenset[tuple[str, str | None]]:
        """Each problem as (kind or rule ID, layer), to tell a new problem from one already
        reported by an earlier check."""
        return frozenset(
            [("stuck", path) for path in self.stuck]
            + [("momentum", path) for path in self.fixed_by_momentum]
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


def snapshot(layers: Iterable[BNLayer]) -> dict[str, MovingStats]:
    """Each layer's moving statistics by path."""
    return {layer.path: (layer.moving_mean, layer.moving_variance) for layer in layers}


def judge(before: Mapping[str, MovingStats], report: Report, steps: int | None) -> GuardResult:
    """Compare the layers of ``report`` (``check_model``'s, now) with the snapshot ``before``.

    A layer built after the snapshot is compared with its initial values; one whose initializers
    are not constants (so that its starting point is unknown) is left out of the movement check.
    """
    stuck: list[str] = []
    fixed: list[str] = []
    frozen: list[str] = []
    moved: list[str] = []
    for layer in _layers_of(report):
        if layer.trainable is False:
            frozen.append(layer.path)
        elif layer.momentum is not None and layer.momentum >= 1.0:
            fixed.append(layer.path)
        else:
            start = before.get(layer.path) or _initial_stats(layer)
            if start is None:
                continue
            unchanged = np.array_equal(layer.moving_mean, start[0]) and np.array_equal(
                layer.moving_variance, start[1]
            )
            (stuck if unchanged else moved).append(layer.path)
    covered = set(stuck) | set(fixed)
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


def _layers(count: int) -> str:
    return f"{count} BatchNorm layer{'' if count == 1 else 's'}"


def _named(paths: Iterable[str]) -> str:
    paths = list(paths)
    shown = ", ".join(paths[:NAMED_LAYERS])
    return shown if len(paths) <= NAMED_LAYERS else f"{shown} and {len(paths) - NAMED_LAYERS} more"
