"""``BatchNormGuard``: the PyTorch guard as a Lightning callback.

Importing this module needs no Lightning; creating a ``BatchNormGuard`` imports
``lightning.pytorch`` (or the older ``pytorch_lightning``) and says which ``pip install`` to run
when neither is there. The object created is a Lightning ``Callback``, so ``Trainer`` takes it.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from bncheck.errors import UsageError
from bncheck.torch.guard import BatchNormWatch, OnProblem, _validate

#: Where each Lightning release keeps ``Callback``, newest first.
LIGHTNING_MODULES = ("lightning.pytorch", "pytorch_lightning")

_CLASSES: dict[type, type] = {}


def _callback_base() -> type:
    for name in LIGHTNING_MODULES:
        try:
            base: type = importlib.import_module(name).Callback
            return base
        except ImportError:
            continue
    raise UsageError(
        "bncheck.torch.lightning.BatchNormGuard needs Lightning: pip install lightning "
        "(for a plain PyTorch loop use bncheck.torch.watch)"
    )


class BatchNormGuard:
    """A Lightning callback that watches the model's BatchNorm modules (``bncheck.torch.watch``)
    from the start of training and checks them every ``check_after_steps`` training batches::

        trainer = lightning.Trainer(callbacks=[BatchNormGuard(on_problem="stop")])

    ``on_problem`` is ``"warn"`` (a ``BatchNormWarning``), ``"raise"``
    (``BatchNormGuardError`` out of ``fit``) or ``"stop"`` (the warning, then
    ``trainer.should_stop``). The hooks are removed when training ends.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> BatchNormGuard:
        base = _callback_base()
        if issubclass(cls, base):
            return super().__new__(cls)
        if base not in _CLASSES:
            _CLASSES[base] = type(cls.__name__, (cls, base), {"__module__": cls.__module__})
        instance: BatchNormGuard = super().__new__(_CLASSES[base])
        return instance

    def __init__(
        self,
        check_after_steps: int = 100,
        on_problem: OnProblem = "warn",
        config: str | os.PathLike[str] | None = None,
    ) -> None:
        _validate(check_after_steps, on_problem)
        self.check_after_steps = check_after_steps
        self.on_problem = on_problem
        self.config = config
        self.watch: BatchNormWatch | None = None
        """The watch of the current (or last) training run."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.watch = BatchNormWatch(
            pl_module,
            check_after_steps=self.check_after_steps,
            on_problem=self.on_problem,
            config=self.config,
        )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.watch is None:
            return
        self.watch.step()
        if self.watch.should_stop:
            trainer.should_stop = True

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.watch is not None:
            self.watch.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        if self.watch is not None:
            self.watch.close()
