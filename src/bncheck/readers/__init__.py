"""Readers: one per format, each turning a path into a ``ModelDescription``.

Only the SavedModel and checkpoint readers import TensorFlow, and only inside their functions.
"""

from __future__ import annotations

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers import detect, keras_archive, legacy_h5, weights_h5

_MAX_REASON = 300


def read_model(path: str) -> ModelDescription:
    """Describe the model at ``path``; any failure becomes a one-line ``ModelReadError``."""
    try:
        return _read(path)
    except ModelReadError:
        raise
    except RecursionError:
        raise ModelReadError("the model is nested too deeply to read") from None
    except Exception as exc:  # a corrupt file may break a parser anywhere; never a traceback
        raise ModelReadError(one_line(exc)) from None


def _read(path: str) -> ModelDescription:
    kind = detect.sniff(path)
    if kind == "zip":
        return keras_archive.read(path)
    if kind == "hdf5":
        with h5py.File(path, "r") as h5:
            if legacy_h5.is_full_model(h5):
                return legacy_h5.read(path, h5)
            return weights_h5.read(path, h5)
    raise ModelReadError(f"{kind} inputs are not supported yet")


def one_line(exc: BaseException) -> str:
    """A short single-line reason for an unexpected exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return f"cannot read the file ({text})"
    return f"unreadable model ({type(exc).__name__}: {text})"
