"""Readers: one per format, each turning a path into a ``ModelDescription``.

None imports TensorFlow or any other framework; the readers of checkpoints, SavedModels, PyTorch,
safetensors and ONNX files load only when such a file is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers import detect, keras3_shards, keras_archive, legacy_h5, weights_h5

_MAX_REASON = 300
CHECKPOINT_KINDS = ("checkpoint", "savedmodel")
_KIND_NAMES = {
    "zip": "a .keras archive",
    "hdf5": "an HDF5 file",
    "keras-shards": "sharded Keras weights",
    "pytorch": "a PyTorch file",
    "safetensors": "a safetensors file",
    "onnx": "an ONNX model",
}


def read_model(path: str) -> ModelDescription:
    """Describe the model at ``path``; any failure becomes a one-line ``ModelReadError``."""
    return _guarded(_read, path)


def read_checkpoint(path: str) -> ModelDescription:
    """Describe a checkpoint or SavedModel; other models are refused with a ``ModelReadError``."""
    return _guarded(_read_checkpoint, path)


def _guarded(reader: Callable[[str], ModelDescription], path: str) -> ModelDescription:
    try:
        return reader(path)
    except ModelReadError:
        raise
    except RecursionError:
        raise ModelReadError("the model is nested too deeply to read") from None
    except Exception as exc:  # a corrupt file may break a parser anywhere; never a traceback
        raise ModelReadError(one_line(exc)) from None


def _read(path: str) -> ModelDescription:
    return _read_kind(path, detect.sniff(path))


def _read_checkpoint(path: str) -> ModelDescription:
    kind = detect.sniff(path)
    if kind not in CHECKPOINT_KINDS:
        raise ModelReadError(
            f"not a checkpoint or SavedModel but {_KIND_NAMES.get(kind, kind)}; "
            "'bncheck inspect' reads it"
        )
    return _read_kind(path, kind)


def _read_kind(path: str, kind: str) -> ModelDescription:
    if kind == "zip":
        return keras_archive.read(path)
    if kind == "keras-shards":
        return keras3_shards.read(path)
    # The readers of other frameworks' formats load only for them.
    if kind == "pytorch":
        from bncheck.readers import pytorch

        return pytorch.read(path)
    if kind == "safetensors":
        from bncheck.readers import safetensors

        return safetensors.read(path)
    if kind == "onnx":
        from bncheck.readers import onnx_graph

        return onnx_graph.read(path)
    if kind == "hdf5":
        index = keras3_shards.index_of_shard(Path(path))
        if index is not None:
            return keras3_shards.read(str(index), shown_as=path)
        with h5py.File(path, "r") as h5:
            if legacy_h5.is_full_model(h5):
                return legacy_h5.read(path, h5)
            return weights_h5.read(path, h5)
    # Imported here, so that their modules (and protobuf) load only for them.
    if kind == "savedmodel":
        from bncheck.readers import savedmodel

        return savedmodel.read(path)
    from bncheck.readers import checkpoint

    return checkpoint.read(path)


def one_line(exc: BaseException) -> str:
    """A short single-line reason for an unexpected exception."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > _MAX_REASON:
        text = text[: _MAX_REASON - 3] + "..."
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return f"cannot read the file ({text})"
    return f"unreadable model ({type(exc).__name__}: {text})"
