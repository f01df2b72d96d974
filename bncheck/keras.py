"""Catch BatchNorm statistics that do not move while a model trains.

``BatchNormGuard`` is a Keras callback for ``fit()``; ``watch(model)`` gives custom training
loops the same check. Both snapshot every BatchNorm layer's moving statistics when training
starts and, every ``check_after_steps`` steps, check that the statistics of every trainable layer
moved as their momentum allows, that no momentum keeps them fixed, and run the static rules of
``bncheck.check_model``; as training ends, that the statistics fit the inputs of the latest
batches beyond noise.

Reading a model's variables costs a transfer from the device (and, under JAX, a sync of the
whole training state back into the model), so the guard reads the moving statistics only in the
last ``WINDOW`` steps before a check (which give back those steps' batch statistics), and
otherwise only the layers' ``momentum`` attributes, to see when a script changes one.
"""

from __future__ import annotations

import os
import sys
import warnings
from types import TracebackType
from typing import Any, Literal

import keras

from bncheck.api import judged_report, resolve
from bncheck.guard import (
    BatchNormGuardError,
    BatchNormWarning,
    GuardResult,
    MomentumChange,
    MovingStats,
    judge,
    snapshot,
)
from bncheck.layer_paths import batchnorm_layers
from bncheck.live import LiveModel, read_variables

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

#: Training steps before a check whose batch statistics the check measures the moving
#: statistics against (read back from the moving statistics after each of them).
WINDOW = 8


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
        self.final_step: int | None = None
        """The step at which training ends, when known (``fit()`` knows it): the check there
        judges the statistics as inference will use them, without discounting the warm-up."""
        self._settings = resolve(None, None, None)
        self._live = LiveModel(model)
        self._before = snapshot(self._live.describe().layers)
        self._layers = _moving_layers(model)
        self._momenta = {path: layer.momentum for path, layer in self._layers}
        self._changes: dict[str, MomentumChange] = {}
        self._window: list[tuple[int, dict[str, MovingStats]]] = []
        self._checked_at: int | None = None
        self._reported: set[tuple[str, str | None]] = set()

    def step(self, count: int = 1) -> GuardResult | None:
        """Count ``count`` training steps; check when the count reaches a multiple of
        ``check_after_steps``. Returns the check's result, or ``None`` when it did not check."""
        previous, self.steps = self.steps, self.steps + count
        self._observe()
        if self._reads_now():
            self._read()
        if self.steps // self.check_after_steps > previous // self.check_after_steps:
            return self.check()
        return None

    def check(self) -> GuardResult:
        """Check now: compare the layers with their state when watching began and with the
        batches of the last steps, run the static rules, and act on any problem not acted on
        before. Returns what the check found."""
        self._observe()
        report = judged_report(self._live.describe(), self._settings)
        window = [stats for _, stats in self._window]
        if not self._window or self._window[-1][0] != self.steps:
            window = []  # the reads do not end now: they say nothing of the statistics now
        result = judge(
            self._before,
            report,
            self.steps or None,
            changes=self._changes,
            window=window,
            final=self.final_step is not None and self.steps >= self.final_step,
        )
        self._checked_at, self.last_result = self.steps, result
        if result.problem and not result.keys <= self._reported:
            self._reported |= result.keys
            self._act(result)
        return result

    def _observe(self) -> None:
        """Note every momentum changed since the last step, with the statistics at the change:
        what the configured momentum allows is measured from there."""
        for path, layer in self._layers:
            momentum = layer.momentum
            if momentum != self._momenta.get(path):
                stats = _read_stats(self.model, [(path, layer)])[path]
                self._changes[path] = MomentumChange(self.steps, self._momenta.get(path), stats)
                self._momenta[path] = momentum

    def _reads_now(self) -> bool:
        """Whether this step is one of the last ``WINDOW`` before a check (or the end)."""
        ahead = -self.steps % self.check_after_steps
        if self.final_step is not None and self.steps <= self.final_step:
            ahead = min(ahead, self.final_step - self.steps)
        return ahead < WINDOW + 1

    def _read(self) -> None:
        if self._window and self._window[-1][0] != self.steps - 1:
            self._window = []  # only consecutive steps give back batch statistics
        if not self._window:
            self._layers = _moving_layers(self.model)  # layers built since are read too
            for path, layer in self._layers:
                self._momenta.setdefault(path, layer.momentum)
        self._window.append((self.steps, _read_stats(self.model, self._layers)))
        del self._window[: -(WINDOW + 1)]

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
            self.final_step = self.steps  # training ends with the block
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
    """A ``fit()`` callback that checks, every ``check_after_steps`` training batches and when
    ``fit()`` ends, that the moving statistics of every trainable BatchNorm layer moved since
    training began as their momentum allows, that no momentum keeps them fixed, that the static
    rules find no problem and, as ``fit()`` ends, that they fit the inputs of the latest batches
    beyond noise.

    Example::

        model.fit(x, y, callbacks=[bncheck.keras.BatchNormGuard(on_problem="raise")])

    ``on_problem`` is ``"warn"`` (a ``BatchNormWarning``, once per problem), ``"raise"``
    (``BatchNormGuardError`` out of ``fit()``) or ``"stop"`` (the warning, then ``fit()`` stops
    at the end of the step). Layers with ``trainable=False`` are not expected to move. Between
    checks it reads the layers' ``momentum`` attributes, and the moving statistics only in the
    last ``WINDOW`` steps before a check.
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
        params = self.params or {}
        if params.get("steps") and params.get("epochs"):
            self.watch.final_step = params["steps"] * params["epochs"]
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

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # The model fit() leaves is the one used: check it as it ends, unless just checked.
        assert self.watch is not None
        if self.watch.final_step is None or self.watch.steps < self.watch.final_step:
            self.watch.final_step = self.watch.steps  # stopped early, or the length was unknown
        if self.watch._checked_at != self.watch.steps:
            self.watch.check()

    def _count_to(self, steps: int) -> None:
        assert self.watch is not None  # on_train_begin comes first
        if steps > self.watch.steps:
            self.watch.step(steps - self.watch.steps)
        else:
            self.watch._observe()


def _moving_layers(model: Any) -> list[tuple[str, Any]]:
    """The built BatchNormalization layers whose moving statistics follow Keras's plain update
    (renormalising layers update theirs otherwise), by path."""
    return [
        (path, layer)
        for path, layer, _ in batchnorm_layers(model)
        if getattr(layer, "moving_mean", None) is not None and not getattr(layer, "renorm", False)
    ]


def _read_stats(model: Any, layers: list[tuple[str, Any]]) -> dict[str, MovingStats]:
    """The moving mean and variance of each layer, read together."""
    # Under JAX, fit() keeps the values outside the variables between syncs.
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):
        sync()
    variables = [v for _, layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    values = read_variables(variables)
    return {path: (values[2 * i], values[2 * i + 1]) for i, (path, _) in enumerate(layers)}


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
