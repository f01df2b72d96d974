"""Recognise a model by its content, not its extension."""

from __future__ import annotations

import re
from pathlib import Path

from bncheck.errors import ModelReadError
from bncheck.readers.h5util import HDF5_SIGNATURE

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
#: HDF5 allows a user block before the superblock: the signature sits at 0, 512, 1024, 2048, ...
_HDF5_OFFSETS = (0, *(512 << k for k in range(12)))
#: A checkpoint's data shard, ``<prefix>.data-00000-of-00001``; the prefix may be empty.
_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")


def sniff(path: str) -> str:
    """One of ``zip``, ``hdf5``, ``savedmodel``, ``checkpoint``; ``ModelReadError`` otherwise."""
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
    with open(target, "rb") as handle:
        head = handle.read(8)
        if not head:
            raise ModelReadError("the file is empty")
        if head[:4] in (ZIP_MAGIC, EMPTY_ZIP_MAGIC):
            return "zip"
        for offset in _HDF5_OFFSETS:
            handle.seek(offset)
            if handle.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                return "hdf5"
    raise ModelReadError(
        "not a model file bncheck can read (expected a .keras archive, an HDF5 file, "
        "a SavedModel directory or a checkpoint)"
    )
