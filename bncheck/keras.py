"""Catch BatchNorm statistics that do not move while a model trains.

``BatchNormGuard`` is a Keras callback for ``fit()``; ``watch(model)`` gives custom training
loops the same check. Both snapshot every BatchNorm layer's moving statistics when training
starts and, every ``check_after_steps`` steps, check that the statistics of every trainable layer
moved, that no momentum keeps them fixed, and run the static rules of ``bncheck.check_model``.

Reading a model's variables costs a transfer from the device (and, under JAX, a sync of the
whole training state back into the model), so the guard reads nothing between checks.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import TracebackType
from typing import Any, Literal

import keras

from bncheck.api import judged_report, resolve
from bncheck.guard import BatchNormGuardError, BatchNormWarning, GuardResult, judge, snapshot
from bncheck.live import LiveModel

__all__ = [
    "BatchNormGuard",
    "BatchNormGuardError",
    "BatchNormWarning",
    "BatchNormWatch",
    "GuardResult",
    "watch",
]

#: What the guard does when a check finds a problem.
OnProblem = Literal["warn", "raise", "stop"]
ON_PROBLEM = ("warn", "raise", "stop")


class BatchNormWatch:
    """Watches one model's BatchNorm layers from the moment it is created.

    Create it with ``watch(model)`` before training. In the training loop, either call
    ``step()`` after each training step (it checks every ``check_after_steps`` steps), or call
    ``check()`` whenever you like; used as a context manager, it also checks when the block
    ends without an exception.

    On a problem it acts as ``on_problem`` says: ``"warn"`` issues a ``BatchNormWarning``,
    ``"raise"`` raises ``BatchNormGuardError``, ``"stop"`` warns and sets the model's
    ``stop_training`` (which ``fit()`` obeys and your loop can test). A problem is acted on once:
    later checks act again only on problems they are the first to find.

    The configuration (``bncheck.toml`` or ``[tool.bncheck]`` found from the working directory
    upward) decides which static rules run and which of their findings are problems: those at or
    above its ``fail-on`` (errors by default).
    """

    def __init__(
        self, model: Any, *, check_after_steps: int = 100, on_problem: OnProblem = "warn"
    ) -> None:
        _validate(check_after_steps, on_problem)
        self.model = model
        """The model watched."""
        self.check_after_steps = check_after_steps
        """How many steps ``step()`` counts between checks."""
        self.on_problem = on_problem
        """``"warn"``, ``"raise"`` or ``"stop"``."""
        self.steps = 0
        """Training steps counted by ``step()`` so far."""
        self.last_result: GuardResult | None = None
        """What the latest check found; ``None`` before the first check."""
        self._settings = resolve(None, None, None)
        self._live = LiveModel(model)
        self._before = snapshot(self._live.describe().layers)
        self._checked_at: int | None = None
        self._reported: set[tuple[str, str | None]] = set()

    def step(self, count: int = 1) -> GuardResult | None:
        """Count ``count`` training steps; check when the count reaches a multiple of
        ``check_after_steps``. Returns the check's result, or ``None`` when it did not check."""
        previous, self.steps = self.steps, self.steps + count
        if self.steps // self.check_after_steps > previous // self.check_after_steps:
            return self.check()
        return None

    def check(self) -> GuardResult:
        """Check now: compare the layers with their state when watching began, run the static
        rules, and act on any problem not acted on before. Returns what the check found."""
        report = judged_report(self._live.describe(), self._settings)
        result = judge(self._before, report, self.steps or None)
        self._checked_at, self.last_result = self.steps, result
        if result.problem and not result.keys <= self._reported:
            self._reported |= result.keys
            self._act(result)
        return result

    def _act(self, result: GuardResult) -> None:
        if self.on_problem == "raise":
            raise BatchNormGuardError(result)
        warnings.warn(result.message, BatchNormWarning, stacklevel=_caller_level())
        if self.on_problem == "stop":
            self.model.stop_training = True

    def __enter__(self) -> BatchNormWatch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is None and self._checked_at != self.steps:
            self.check()


def watch(
    model: Any, *, check_after_steps: int = 100, on_problem: OnProblem = "warn"
) -> BatchNormWatch:
    """Start watching ``model``'s BatchNorm layers, for a custom training loop.

    Call it before the first training step: it takes the snapshot that later checks compare
    with. Then call ``.step()`` after every training step, or ``.check()`` when you like, or use
    it as a context manager::

        with bncheck.keras.watch(model, on_problem="raise") as guard:
            for images, labels in batches:
                train_step(images, labels)
                guard.step()

    Under JAX with a stateless loop (``model.stateless_call``), assign the new state back to the
    model's variables before a check: the guard reads the model's variables.
    """
    return BatchNormWatch(model, check_after_steps=check_after_steps, on_problem=on_problem)


class BatchNormGuard(keras.callbacks.Callback):
    """A ``fit()`` callback that checks, every ``check_after_steps`` training batches, that
    the moving statistics of every trainable BatchNorm layer moved since training began, that
    no momentum keeps them fixed, and that the static rules find no problem.

    Example::

        model.fit(x, y, callbacks=[bncheck.keras.BatchNormGuard(on_problem="raise")])

    ``on_problem`` is ``"warn"`` (a ``BatchNormWarning``, once per problem), ``"raise"``
    (``BatchNormGuardError`` out of ``fit()``) or ``"stop"`` (the warning, then ``fit()`` stops
    at the end of the step). Layers with ``trainable=False`` are not expected to move. It reads
    the model only at a check: nothing between checks, so the cost per step is a Python call.
    """

    def __init__(self, check_after_steps: int = 100, on_problem: OnProblem = "warn") -> None:
        super().__init__()
        _validate(check_after_steps, on_problem)
        self.check_after_steps = check_after_steps
        self.on_problem = on_problem
        self.watch: BatchNormWatch | None = None
        """The watch of the current (or last) ``fit()``; its ``steps`` counts the batches."""
        self._steps_before_epoch = 0
        self._last_batch = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.watch = BatchNormWatch(
            self.model, check_after_steps=self.check_after_steps, on_problem=self.on_problem
        )
        self._steps_before_epoch = 0

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._last_batch = 0

    # Counting at the start of each batch rather than at its end keeps Keras's asynchronous
    # dispatch of batch-end callbacks (JAX) on: a callback that overrides on_train_batch_end
    # turns it off for every callback.
    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        # `batch` is the index of the first step about to run: the steps this epoch completed.
        self._last_batch = batch
        self._count_to(self._steps_before_epoch + batch)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # The epoch's length when Keras knows it, else one step past the last batch started
        # (exact unless several steps run per execution).
        known = (self.params or {}).get("steps")
        self._steps_before_epoch += known if known else self._last_batch + 1
        self._count_to(self._steps_before_epoch)

    def _count_to(self, steps: int) -> None:
        assert self.watch is not None  # on_train_begin comes first
        if steps > self.watch.steps:
            self.watch.step(steps - self.watch.steps)


def _caller_level() -> int:
    """The ``stacklevel`` that makes a warning point at the first frame outside bncheck (the
    user's ``guard.step()`` line, or Keras's callback loop), as seen from the caller."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    return level


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _validate(check_after_steps: int, on_problem: str) -> None:
    if isinstance(check_after_steps, bool) or not isinstance(check_after_steps, int):
        raise TypeError(f"check_after_steps must be an int, not {check_after_steps!r}")
    if check_after_steps < 1:
        raise ValueError(f"check_after_steps must be at least 1, not {check_after_steps}")
    if on_problem not in ON_PROBLEM:
        raise ValueError(
            f"on_problem must be one of {', '.join(map(repr, ON_PROBLEM))}, not {on_problem!r}"
        )
