"""Write a repaired model: a copy of the input with only the moving statistics overwritten.

The model is never re-saved through Keras, which would rewrite every variable (and drop or
rebuild the optimizer state). Instead the file is copied and the ``moving_mean`` and
``moving_variance`` datasets the readers located are overwritten in place, so every other byte of
every other variable stays as it was:

- ``.h5``: the copy is opened with h5py and the datasets are written;
- ``.keras``: ``model.weights.h5`` is copied out of the archive and edited the same way, then the
  archive is rebuilt member by member with the original entries (names, order, timestamps,
  compression) and the other members' bytes unchanged.

The result is written to a temporary file in the target's directory and moved over the target
with ``os.replace``, so a reader never sees half a file and a failure leaves the target as it
was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from bncheck.errors import UsageError
from bncheck.readers.keras_archive import WEIGHTS_MEMBER

_COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class NewStatistics:
    """The statistics to write for one layer, and where they go."""

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    mean_location: str
    """Dataset path of ``moving_mean`` (inside the ``.h5`` file or ``model.weights.h5``)."""
    variance_location: str


def write_model(source: str, target: str, kind: str, updates: Mapping[str, NewStatistics]) -> None:
    """Write ``target`` as ``source`` with ``updates`` applied; ``kind`` is ``keras`` or ``h5``.
    A failure to write (permissions, a full disk) is a one-line ``UsageError``."""
    try:
        with _atomic_target(source, target) as temporary:
            if kind == "h5":
                shutil.copyfile(source, temporary)
                _overwrite(temporary, updates)
            else:
                _rewrite_archive(source, temporary, updates)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _atomic_target(source: str, target: str) -> Iterator[str]:
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise UsageError(f"cannot write {target}: no such directory {directory}")
    try:
        handle, temporary = tempfile.mkstemp(
            prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
        )
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(handle)
    try:
        yield temporary
        shutil.copymode(source, temporary)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _overwrite(path: str, updates: Mapping[str, NewStatistics]) -> None:
    with h5py.File(path, "r+") as h5:
        for statistics in updates.values():
            _store(h5[statistics.mean_location], statistics.moving_mean)
            _store(h5[statistics.variance_location], statistics.moving_variance)


def _store(dataset: h5py.Dataset, values: np.ndarray) -> None:
    values = np.asarray(values, dtype=np.float32).reshape(dataset.shape)
    if dataset.attrs.get("dtype") == "bfloat16" and dataset.dtype.itemsize == 2:
        # Keras 3 stores bfloat16 as the top 16 bits of a float32: round to nearest even.
        bits = values.view(np.uint32).astype(np.uint64)
        bits += 0x7FFF + ((bits >> 16) & 1)
        dataset[...] = (bits >> 16).astype(np.uint16).view(dataset.dtype)
    else:
        dataset[...] = values.astype(dataset.dtype)


def _rewrite_archive(source: str, target: str, updates: Mapping[str, NewStatistics]) -> None:
    with tempfile.TemporaryDirectory(prefix="bncheck-") as scratch:
        weights = Path(scratch) / WEIGHTS_MEMBER
        with zipfile.ZipFile(source) as archive:
            with archive.open(WEIGHTS_MEMBER) as member, open(weights, "wb") as copy:
                shutil.copyfileobj(member, copy, _COPY_CHUNK)
            _overwrite(str(weights), updates)
            with zipfile.ZipFile(target, "w") as rebuilt:
                for info in archive.infolist():
                    if info.filename == WEIGHTS_MEMBER:
                        entry = _same_entry(info, weights.stat().st_size)
                        with open(weights, "rb") as src, rebuilt.open(entry, "w") as dst:
                            shutil.copyfileobj(src, dst, _COPY_CHUNK)
                    else:
                        with archive.open(info) as src, rebuilt.open(_same_entry(info), "w") as dst:
                            shutil.copyfileobj(src, dst, _COPY_CHUNK)


def _same_entry(info: zipfile.ZipInfo, size: int | None = None) -> zipfile.ZipInfo:
    """A fresh entry with the original's name, timestamp, attributes and compression."""
    entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    entry.compress_type = info.compress_type
    entry.external_attr = info.external_attr
    entry.create_system = info.create_system
    entry.comment = info.comment
    entry.file_size = info.file_size if size is None else size
    return entry
