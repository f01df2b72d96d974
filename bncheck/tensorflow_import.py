"""Import TensorFlow on demand, for the formats that need it, without its start-up chatter."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import ModuleType

from bncheck.errors import ModelReadError


def import_tensorflow() -> ModuleType:
    """The ``tensorflow`` module; ``ModelReadError`` when it cannot be imported."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        with _native_stderr_silenced():
            import tensorflow
    except ImportError as exc:
        raise ModelReadError(
            f"reading checkpoints and SavedModels needs TensorFlow, which fails to import ({exc})"
        ) from None
    return tensorflow


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """TensorFlow's native libraries log to file descriptor 2 while loading (oneDNN, CUDA
    probing), whatever ``TF_CPP_MIN_LOG_LEVEL`` says; those lines would bury bncheck's report."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
