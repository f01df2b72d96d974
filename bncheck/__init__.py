"""bncheck: check and repair the BatchNormalization layers of saved TensorFlow/Keras models.

The Python API (``docs/api.md``)::

    import bncheck

    report = bncheck.inspect("model.keras")      # a saved model, like `bncheck inspect`
    report = bncheck.check_model(model)          # a live Keras model, in memory
    result = bncheck.recalibrate(model, data)    # re-estimate the statistics, verified
    print(bncheck.render(report, "json"))

    model.fit(x, y, callbacks=[bncheck.keras.BatchNormGuard()])   # while training

Importing ``bncheck`` is cheap: each name below loads its module on first use, so h5py, Keras
and TensorFlow load only when a function that needs them runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from bncheck import keras
    from bncheck.api import check_model, inspect, render
    from bncheck.errors import BncheckError, UsageError
    from bncheck.findings import ExitCode, FailOn, Finding, ModelResult, Report, Severity
    from bncheck.guard import BatchNormGuardError, BatchNormWarning, GuardResult
    from bncheck.model import BNLayer, ModelDescription
    from bncheck.recalibrate.api import recalibrate

#: Public name -> the module that defines it (``None``: the name is a submodule).
_EXPORTS: dict[str, str | None] = {
    "inspect": "bncheck.api",
    "check_model": "bncheck.api",
    "render": "bncheck.api",
    "recalibrate": "bncheck.recalibrate.api",
    "Report": "bncheck.findings",
    "ModelResult": "bncheck.findings",
    "Finding": "bncheck.findings",
    "Severity": "bncheck.findings",
    "FailOn": "bncheck.findings",
    "ExitCode": "bncheck.findings",
    "ModelDescription": "bncheck.model",
    "BNLayer": "bncheck.model",
    "BncheckError": "bncheck.errors",
    "UsageError": "bncheck.errors",
    "BatchNormGuardError": "bncheck.guard",
    "BatchNormWarning": "bncheck.guard",
    "GuardResult": "bncheck.guard",
    "keras": None,
}

__all__ = [
    "__version__",
    "inspect",
    "check_model",
    "render",
    "recalibrate",
    "Report",
    "ModelResult",
    "Finding",
    "Severity",
    "FailOn",
    "ExitCode",
    "ModelDescription",
    "BNLayer",
    "BncheckError",
    "UsageError",
    "BatchNormGuardError",
    "BatchNormWarning",
    "GuardResult",
    "keras",
]

# `bncheck.recalibrate` is a function, loaded on first use by `__getattr__`, and the name of a
# subpackage. The subpackage (empty until its modules load) is imported now and its name
# dropped, so that importing its modules later cannot rebind `bncheck.recalibrate` to it.
importlib.import_module("bncheck.recalibrate")
globals().pop("recalibrate")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
    module_name = _EXPORTS[name]
    if module_name is None:
        value: Any = importlib.import_module(f"bncheck.{name}")
    else:
        value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
