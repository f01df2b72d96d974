"""Recognise a model by its content, not its extension, alone or in a folder of files."""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import BinaryIO

from bncheck.errors import ModelReadError
from bncheck.readers import keras3_shards
from bncheck.readers.framework_signatures import LEGACY_MAGIC, data_pickle_member, is_safetensors
from bncheck.readers.h5util import HDF5_SIGNATURE

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
#: HDF5 allows a user block before the superblock: the signature sits at 0, 512, 1024, 2048, ...
_HDF5_OFFSETS = (0, *(512 << k for k in range(12)))
#: A checkpoint's data shard, ``<prefix>.data-00000-of-00001``; the prefix may be empty.
_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
#: Files named like this are models whatever their content, so a broken one is reported, not
#: skipped, when a folder is scanned.
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".pt", ".pth", ".safetensors", ".onnx")


def sniff(path: str) -> str:
    """One of ``zip``, ``hdf5``, ``keras-shards`` (the ``.json`` index of sharded Keras weights),
    ``savedmodel``, ``checkpoint``, ``pytorch``, ``safetensors``, ``onnx``; ``ModelReadError``
    otherwise."""
    target = Path(path)
    if target.is_dir():
        if (target / "saved_model.pb").is_file() or (target / "saved_model.pbtxt").is_file():
            return "savedmodel"
        if (target / "checkpoint").is_file() or any(target.glob("*.index")):
            return "checkpoint"
        raise ModelReadError(
            "directory is neither a SavedModel (no saved_model.pb) nor a checkpoint "
            "(no checkpoint or .index file)"
        )
    if not target.exists():
        if Path(f"{path}.index").is_file():
            return "checkpoint"
        raise ModelReadError("no such file or directory")
    if not target.is_file():
        raise ModelReadError("not a regular file")
    if target.name == "checkpoint" or target.name.endswith(".index"):
        return "checkpoint"
    if _DATA_SHARD.search(target.name) and Path(_DATA_SHARD.sub(".index", path)).is_file():
        return "checkpoint"
    if keras3_shards.is_index(target):
        return "keras-shards"
    with open(target, "rb") as handle:
        kind = _content_kind(handle)
        if kind in ("zip", None):
            kind = _other_framework_kind(target, handle, kind)
    if kind == "empty":
        raise ModelReadError("the file is empty")
    if kind is not None:
        return kind
    raise ModelReadError(
        "not a model file bncheck can read (expected a .keras archive, an HDF5 file, "
        "the .json index of sharded weights, a SavedModel directory, a checkpoint, a PyTorch or "
        "safetensors file or an .onnx model)"
    )


def _other_framework_kind(path: Path, handle: BinaryIO, kind: str | None) -> str | None:
    """``pytorch``, ``safetensors`` or ``onnx`` for those formats, else ``kind`` unchanged: a
    zip archive is PyTorch's when it holds ``<name>/data.pkl`` and no ``config.json``."""
    if kind == "zip":
        return "pytorch" if _is_pytorch_zip(path) else kind
    handle.seek(0)
    head = handle.read(len(LEGACY_MAGIC))
    if head == LEGACY_MAGIC:
        return "pytorch"
    suffix = path.suffix.lower()
    if suffix == ".safetensors" or is_safetensors(head, path.stat().st_size):
        return "safetensors"
    return "onnx" if suffix == ".onnx" else None


def _is_pytorch_zip(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except Exception:  # a corrupt archive may fail anywhere in zipfile: the .keras reader says why
        return False
    return "config.json" not in names and data_pickle_member(names) is not None


def _content_kind(handle: BinaryIO) -> str | None:
    """``zip``, ``hdf5`` or ``empty`` from a file's first bytes; ``None`` for anything else."""
    head = handle.read(8)
    if not head:
        return "empty"
    if head[:4] in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
        return "zip"
    for offset in _HDF5_OFFSETS:
        handle.seek(offset)
        if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
            return "hdf5"
    return None


def is_model_directory(path: str) -> bool:
    """A SavedModel or checkpoint directory: one model, not a folder to search."""
    try:
        return os.path.isdir(path) and sniff(path) in ("savedmodel", "checkpoint")
    except ModelReadError:
        return False


def find_models(folder: str) -> list[str]:
    """Every model under ``folder``, recursively, in sorted order.

    A file is a model when its content says so (a zip archive holding ``config.json`` or a
    PyTorch ``data.pkl``, an HDF5 file, the index of sharded Keras weights, a PyTorch legacy or
    safetensors file) or its name ends in a model suffix, except a shard that its index stands
    for; a SavedModel or checkpoint directory is one model.
    Hidden files and directories (``.git``) are skipped, and each real directory is searched once.
    """
    found: list[str] = []
    seen: set[str] = set()

    def search(directory: str) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_model_directory(entry.path):
                    found.append(entry.path)
                else:
                    search(entry.path)
            elif entry.is_file() and _is_model_file(entry.path):
                found.append(entry.path)

    search(folder)
    return found


def _is_model_file(path: str) -> bool:
    if keras3_shards.index_of_shard(Path(path)) is not None:
        return False
    if path.lower().endswith(MODEL_SUFFIXES) or keras3_shards.is_index(Path(path)):
        return True
    try:
        with open(path, "rb") as handle:
            kind = _content_kind(handle)
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
            return "config.json" in names or data_pickle_member(names) is not None
        if kind is None:
            with open(path, "rb") as handle:
                kind = _other_framework_kind(Path(path), handle, kind)
        return kind in ("hdf5", "pytorch", "safetensors")
    except Exception:  # a corrupt archive may fail anywhere in zipfile: then it is no model
        return False
