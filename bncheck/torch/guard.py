"""``bncheck.torch.watch``: the training-loop guard for PyTorch, on forward hooks.

A forward hook on every BatchNorm module counts its calls in training and in eval mode and, in
the last ``KEPT_MOMENTS`` steps before each check and every few calls otherwise, keeps its
input's batch moments (on the device, without synchronising). Every ``check_after_steps``
steps (or at ``check()``), the guard reads the modules and finds:

- modules that never ran in training mode since the watch began while their ``weight`` or
  ``bias`` changed: the loop trains with the model in ``eval()`` (``running_mean`` and
  ``running_var`` never update);
- ``momentum=0``, which keeps ``running_mean`` and ``running_var`` fixed in training mode too;
- trainable modules whose running statistics do not fit the batches they saw recently, by the
  rule the Keras guard applies (``bncheck.guard.stale_layers``): beyond the estimate's noise and
  several times what one batch's statistics differ from the others';
- and, as ``check_module`` does, every static rule's finding at or above ``fail-on``.

Between checks a hook costs a counter; the calls of the last ``KEPT_MOMENTS`` steps before a
check, and one call in ``check_after_steps // KEPT_MOMENTS`` otherwise, also take the input's
mean and variance.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections import deque
from types import TracebackType
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from bncheck.api import judged_report, resolve
from bncheck.findings import Report
from bncheck.guard import (
    MOVEMENT_RULES,
    BatchNormGuardError,
    BatchNormWarning,
    GuardResult,
    GuardWords,
    Staleness,
    finding_lines,
    measure_fit,
    named_paths,
    stale_layers,
    stale_lines,
)
from bncheck.model import PYTORCH_WORDS
from bncheck.records import record
from bncheck.torch.modules import (
    TRACKING,
    BatchNormModule,
    batchnorm_modules,
    describe,
    frozen,
    tensor,
)

#: What the guard does when a check finds a problem.
OnProblem = Literal["warn", "raise", "stop"]
ON_PROBLEM = ("warn", "raise", "stop")

#: Batch moments each module keeps between checks (the latest ones).
KEPT_MOMENTS = 8

TORCH_GUARD_WORDS = GuardWords(
    "running_mean and running_var", "BatchNorm module", PYTORCH_WORDS, "bncheck.torch.recalibrate"
)


@record
class TorchGuardResult(GuardResult):
    """What one check of the PyTorch guard found; ``stuck`` are the modules trained in eval
    mode, ``fixed_by_momentum`` those with ``momentum=0``."""

    @property
    def problem(self) -> bool:
        return bool(self.stuck or self.fixed_by_momentum or self.stale or self.findings)

    @property
    def message(self) -> str:
        if not self.problem:
            return ""
        lines = []
        units = TORCH_GUARD_WORDS.units
        when = f"after {self.steps} steps, " if self.steps else ""
        if self.stuck:
            lines.append(
                f"{when}{units(len(self.stuck))} never ran in training mode while their "
                "weight and bias trained, so running_mean and running_var never updated: call "
                "model.train() before the training steps (model.eval() only to evaluate) "
                f"({named_paths(self.stuck)})"
            )
        if self.fixed_by_momentum:
            lines.append(
                f"running_mean and running_var of {units(len(self.fixed_by_momentum))} cannot "
                "update: momentum=0 keeps them fixed in model.train() too; use PyTorch's "
                "default momentum=0.1, or momentum=None for a cumulative average "
                f"({named_paths(self.fixed_by_momentum)})"
            )
        lines += stale_lines(self.stale, TORCH_GUARD_WORDS)
        lines += finding_lines(self.findings)
        if self.frozen:
            lines.append(
                f"({units(len(self.frozen))} frozen (requires_grad=False or FrozenBatchNorm): "
                "not expected to update; not a problem)"
            )
        return "\n".join(lines)


class _Tracked:
    """What the hook of one module records between checks."""

    def __init__(self, entry: BatchNormModule, every: int) -> None:
        self.entry = entry
        self.every = every
        self.training_calls = 0
        self.eval_calls = 0
        self.calls = 0
        self.recording = False
        """Set by the watch in the steps just before a check: every call keeps its moments."""
        self.moments: deque[tuple[torch.Tensor, torch.Tensor, bool]] = deque(maxlen=KEPT_MOMENTS)
        module = entry.module
        self.parameters = {
            name: getattr(module, name).detach().clone()
            for name in ("weight", "bias")
            if isinstance(getattr(module, name, None), torch.Tensor)
        }

    def hook(self, module: nn.Module, args: tuple[Any, ...], _: Any) -> None:
        if module.training:
            self.training_calls += 1
        else:
            self.eval_calls += 1
        self.calls += 1
        if (self.recording or self.calls % self.every == 0) and args:
            inputs = args[0]
            if isinstance(inputs, torch.Tensor) and inputs.dim() >= 2 and inputs.numel():
                with torch.no_grad():
                    values = inputs.detach().to(torch.float64)
                    axes = [0, *range(2, values.dim())]
                    # Training mode normalises with the biased variance.
                    variance, mean = torch.var_mean(values, dim=axes, correction=0)
                    self.moments.append((mean, variance, bool(module.training)))

    def weights_changed(self) -> bool:
        module = self.entry.module
        return any(
            not torch.equal(getattr(module, name).detach(), before)
            for name, before in self.parameters.items()
        )

    def fit(self, steps: int) -> Staleness | None:
        """How the running statistics fit the batches kept; ``None`` with fewer than three."""
        if len(self.moments) < 3:
            return None
        module = self.entry.module
        means = torch.stack([mean for mean, _, _ in self.moments]).cpu().numpy()
        variances = torch.stack([variance for _, variance, _ in self.moments]).cpu().numpy()
        running = (
            tensor(module, "running_mean").detach().to(torch.float64).cpu().numpy(),
            tensor(module, "running_var").detach().to(torch.float64).cpu().numpy(),
        )
        if running[0].shape != means.shape[1:]:
            return None
        momentum = getattr(module, "momentum", None)
        tracked = int(getattr(module, "num_batches_tracked", 0) or 0)
        if momentum is None:
            averaged, keras_momentum, weight = float(max(tracked, 1)), None, 0.0
        else:
            keras_momentum = 1.0 - float(momentum)
            averaged = (1.0 + keras_momentum) / max(1.0 - keras_momentum, 1e-12)
            weight = keras_momentum**tracked
        measured, noise, spread = measure_fit(
            running, means, variances, float(getattr(module, "eps", 1e-5)), averaged
        )
        if not all(map(np.isfinite, (measured, noise, spread))):
            return None
        updated = any(training for _, _, training in self.moments)
        return Staleness(
            layer=self.entry.path,
            disagreement=measured,
            noise=noise,
            spread=spread,
            batches=len(self.moments),
            momentum=keras_momentum,
            steps=steps,
            start_weight=weight,
            cause="lag" if updated else "not updated",
        )


class BatchNormWatch:
    """Watches one module's BatchNorm modules through forward hooks, from its creation until
    ``close()`` (or the end of its ``with`` block), which removes the hooks.

    Call ``step()`` after each training step (it checks every ``check_after_steps`` steps), or
    ``check()`` when you like; as a context manager it also checks when the block ends without
    an exception. On a problem it acts as ``on_problem`` says: ``"warn"`` issues a
    ``BatchNormWarning``, ``"raise"`` raises ``BatchNormGuardError``, ``"stop"`` warns and sets
    ``should_stop`` for the loop to test. Each problem is acted on once.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        check_after_steps: int = 100,
        on_problem: OnProblem = "warn",
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        _validate(check_after_steps, on_problem)
        self.module = module
        """The module watched."""
        self.check_after_steps = check_after_steps
        self.on_problem = on_problem
        self.steps = 0
        """Training steps counted by ``step()`` so far."""
        self.should_stop = False
        """Set by a check that found a problem with ``on_problem="stop"``."""
        self.last_result: TorchGuardResult | None = None
        """What the latest check found; ``None`` before the first check."""
        self._settings = resolve(None, None, config)
        every = max(1, check_after_steps // KEPT_MOMENTS)
        self._tracked = [
            _Tracked(entry, every) for entry in batchnorm_modules(module) if entry.kind == TRACKING
        ]
        for tracked in self._tracked:
            tracked.recording = -1 % check_after_steps < KEPT_MOMENTS
        self._handles = [
            tracked.entry.module.register_forward_hook(functools.partial(_Tracked.hook, tracked))
            for tracked in self._tracked
        ]
        self._checked_at: int | None = None
        self._reported: set[tuple[str, str | None]] = set()

    def step(self, count: int = 1) -> TorchGuardResult | None:
        """Count ``count`` training steps; check when the count reaches a multiple of
        ``check_after_steps``. Returns the check's result, or ``None`` when it did not check."""
        previous, self.steps = self.steps, self.steps + count
        result = None
        if self.steps // self.check_after_steps > previous // self.check_after_steps:
            result = self.check()
        # The next step is one of the last KEPT_MOMENTS before a check: keep all its moments.
        recording = -(self.steps + 1) % self.check_after_steps < KEPT_MOMENTS
        for tracked in self._tracked:
            tracked.recording = recording
        return result

    def check(self) -> TorchGuardResult:
        """Check now, act on any problem not acted on before, and return what was found."""
        report = judged_report(describe(self.module), self._settings)
        result = self._judge(report)
        self._checked_at, self.last_result = self.steps, result
        for tracked in self._tracked:
            tracked.moments.clear()
        if result.problem and not result.keys <= self._reported:
            self._reported |= result.keys
            self._act(result)
        return result

    def _judge(self, report: Report) -> TorchGuardResult:
        stuck, fixed, frozen_paths, moved = [], [], [], []
        measured: list[Staleness] = []
        for tracked in self._tracked:
            entry, module = tracked.entry, tracked.entry.module
            if frozen(entry):
                frozen_paths.append(entry.path)
            elif module.momentum == 0:
                fixed.append(entry.path)
            elif tracked.training_calls:
                moved.append(entry.path)
            elif tracked.eval_calls and tracked.weights_changed():
                stuck.append(entry.path)
            if entry.path in stuck or entry.path in fixed or entry.path in frozen_paths:
                continue
            if _warming_up(module):
                continue
            fit = tracked.fit(self.steps)
            if fit is not None:
                measured.append(fit)
        covered = set(stuck) | set(fixed)
        findings = tuple(
            finding
            for finding in report.failing()
            if not (finding.rule in MOVEMENT_RULES and finding.layer in covered)
        )
        return TorchGuardResult(
            steps=self.steps or None,
            stuck=tuple(stuck),
            fixed_by_momentum=tuple(fixed),
            frozen=tuple(frozen_paths),
            moved=tuple(moved),
            findings=findings,
            report=report,
            stale=stale_layers(measured),
            measured=tuple(measured),
        )

    def _act(self, result: TorchGuardResult) -> None:
        if self.on_problem == "raise":
            raise BatchNormGuardError(result)
        warnings.warn(result.message, BatchNormWarning, stacklevel=_caller_level())
        if self.on_problem == "stop":
            self.should_stop = True

    def close(self) -> None:
        """Remove the hooks; the watch checks no more."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> BatchNormWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self._checked_at != self.steps:
                self.check()
        finally:
            self.close()


#: The weight the initial statistics may still carry in the running ones before they are judged:
#: early in training they are still moving from 0 and 1 towards the data, as they should.
WARM_UP_WEIGHT = 0.01


def _warming_up(module: nn.Module) -> bool:
    """The running statistics may still carry more than ``WARM_UP_WEIGHT`` of their initial
    values: ``(1 - momentum) ** num_batches_tracked``, with the momentum taken as at least
    PyTorch's default 0.1. A smaller momentum gets no longer: statistics that lag for thousands
    of steps are the stale statistics the guard is for (a cumulative average, ``momentum=None``,
    is judged from the first batch)."""
    momentum = getattr(module, "momentum", None)
    tracked = getattr(module, "num_batches_tracked", None)
    if momentum is None or tracked is None or not 0.0 < float(momentum) < 1.0:
        return False
    return bool((1.0 - max(float(momentum), 0.1)) ** int(tracked) > WARM_UP_WEIGHT)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside bncheck."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


def _validate(check_after_steps: int, on_problem: str) -> None:
    if isinstance(check_after_steps, bool) or not isinstance(check_after_steps, int):
        raise TypeError(f"check_after_steps must be an int, not {check_after_steps!r}")
    if check_after_steps < 1:
        raise ValueError(f"check_after_steps must be at least 1, not {check_after_steps}")
    if on_problem not in ON_PROBLEM:
        raise ValueError(
            f"on_problem must be one of {', '.join(map(repr, ON_PROBLEM))}, not {on_problem!r}"
        )
