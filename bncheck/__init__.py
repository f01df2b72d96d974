"""bncheck: check and repair the BatchNormalization layers of saved TensorFlow/Keras models."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "recalibrate"]

if TYPE_CHECKING:
    from bncheck.recalibrate.api import recalibrate

# `bncheck.recalibrate` is a function, loaded on first use by `__getattr__`, and the name of a
# subpackage. The subpackage (empty until its modules load) is imported now and its name
# dropped, so that importing its modules later cannot rebind `bncheck.recalibrate` to it.
importlib.import_module("bncheck.recalibrate")
globals().pop("recalibrate")


def __getattr__(name: str) -> Any:
    if name == "recalibrate":
        from bncheck.recalibrate.api import recalibrate as function

        globals()["recalibrate"] = function
        return function
    raise AttributeError(f"module 'bncheck' has no attribute {name!r}")
