"""Readers: one per format, each turning a path into a ``ModelDescription``.

None imports TensorFlow or any other framework. ``bncheck.formats`` names each format's reader,
which loads only when a file of that format is read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from bncheck import formats
from bncheck.errors import ModelReadError, UsageError
from bncheck.model import ModelDescription
from bncheck.readers import detect

_MAX_REASON = 300
_T = TypeVar("_T")
#: What ``bncheck checkpoint`` reads.
CHECKPOINT_FORMATS = ("checkpoint", "savedmodel")


def read_model(path: str) -> ModelDescription:
    """Describe the model at ``path``; any failure becomes a one-line ``ModelReadError``."""
    return _guarded(_read, path)


def read_checkpoint(path: str) -> ModelDescription:
    """Describe a checkpoint or SavedModel. Another model is refused with a ``UsageError`` (the
    command does not apply to it); an unreadable path is a ``ModelReadError``."""
    found = _guarded(detect.sniff, path)
    if found.name not in CHECKPOINT_FORMATS:
        raise UsageError(
            f"{path}: not a checkpoint or SavedModel but {found.called}; 'bncheck inspect' reads it"
        )
    return _guarded(lambda _: _read_as(found, path), path)


def _guarded(reader: Callable[[str], _T], path: str) -> _T:
    try:
        return reader(path)
    except ModelReadError:
        raise
    except RecursionError:
        raise ModelReadError("the model is nested too deeply to read") from None
    except Exception as exc:  # a corrupt file may break a parser anywhere; never a traceback
        raise ModelReadError(one_line(exc)) from None


def _read(path: str) -> ModelDescription:
    return _read_as(detect.sniff(path), path)


def _read_as(found: formats.Format, path: str) -> ModelDescription:
    # The reader's module, and whatever it imports, loads only for its format.
    reader: Callable[[str], ModelDescription] = formats.load(found.reader)
    return reader(path)


def one_line(exc: BaseException) -> str:
    """A short single-line reason for an unexpected exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return f"cannot read the file ({text})"
    return f"unreadable model ({type(exc).__name__}: {text})"
