"""bncheck for live PyTorch modules: check them, guard the training loop, recalibrate them.

::

    import bncheck.torch

    report = bncheck.torch.check_module(model)           # the report `bncheck inspect` gives
    with bncheck.torch.watch(model) as guard:            # in the training loop
        for x, y in loader:
            train_step(x, y)
            guard.step()
    result = bncheck.torch.recalibrate(model, loader, validate=held_out, in_place=True)

Importing it imports torch (this package's ``import torch`` is the real one: imports are
absolute). See ``docs/pytorch.md``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from bncheck.guard import BatchNormGuardError, BatchNormWarning
from bncheck.torch.guard import BatchNormWatch, OnProblem, TorchGuardResult
from bncheck.torch.recalibration import recalibrate

if TYPE_CHECKING:
    from bncheck.findings import Report

__all__ = [
    "BatchNormGuardError",
    "BatchNormWarning",
    "BatchNormWatch",
    "TorchGuardResult",
    "check_module",
    "recalibrate",
    "watch",
]


def check_module(
    module: Any,
    *,
    select: Any = None,
    ignore: Any = None,
    config: str | os.PathLike[str] | None = None,
) -> Report:
    """Judge a live ``torch.nn.Module``'s BatchNorm modules with the static rules of
    ``bncheck inspect``: the same ``Report`` as for its saved state dict, from its current
    buffers, parameters and flags (``momentum``, ``eps``, ``track_running_stats``, training
    mode). ``DataParallel``, ``DistributedDataParallel`` and ``torch.compile`` wrappers are
    looked through. ``select``, ``ignore`` and ``config`` are ``bncheck.inspect``'s.

    Raises:
        TypeError: ``module`` is not a ``torch.nn.Module``.
        UsageError: an unknown rule, or a configuration file that is missing or invalid.
    """
    from bncheck.api import judged_report, resolve
    from bncheck.torch.modules import describe

    return judged_report(describe(module), resolve(select, ignore, config))


def watch(
    module: Any,
    *,
    check_after_steps: int = 100,
    on_problem: OnProblem = "warn",
    config: str | os.PathLike[str] | None = None,
) -> BatchNormWatch:
    """Start watching ``module``'s BatchNorm modules in a training loop: forward hooks record
    their modes and, now and then, their inputs' batch moments; every ``check_after_steps``
    calls of ``.step()`` (or at ``.check()``) the guard checks for training in ``eval()`` mode,
    ``momentum=0``, running statistics that disagree with the batches beyond noise, and the
    static rules' errors. Use it as a context manager, which removes the hooks at the end::

        with bncheck.torch.watch(model, on_problem="raise") as guard:
            for x, y in loader:
                train_step(x, y)
                guard.step()
    """
    return BatchNormWatch(
        module, check_after_steps=check_after_steps, on_problem=on_problem, config=config
    )
