"""Write a repaired model: a copy of the input with only the moving statistics overwritten.

The model is never re-saved through Keras, which would rewrite every variable (and drop or
rebuild the optimizer state). Instead the file is copied and the ``moving_mean`` and
``moving_variance`` datasets the readers located are overwritten in place, so every other byte of
every other variable stays as it was:

- ``.h5``: the copy is opened with h5py and the datasets are written;
- ``.keras``: ``model.weights.h5`` is copied out of the archive and edited the same way, then the
  archive is rebuilt member by member with the original entries (names, order, timestamps,
  compression) and the other members' bytes unchanged.

Each dataset is found as the reader found it (``h5util.lookup``: hard links only, one plain path
below the root, no link followed), so the writer changes the very objects that were read and
HDF5 opens no other file. Before the result replaces anything it is checked against MODEL:

- each dataset written is contiguous, distinct from the others, and reads back as the new values;
- the written HDF5 file differs from MODEL's only inside those datasets' bytes, and a ``.keras``
  archive has MODEL's members, in order, each with MODEL's bytes but the weights;
- MODEL's SHA-256 is what it was before writing began.

Otherwise nothing is written. The result is written to a temporary file in the target's directory
and moved over the target with ``os.replace``, so a reader never sees half a file and a failure
leaves the target as it was. Every failure is one line (``WriteError``, exit code 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import h5py
import numpy as np

from bncheck.errors import ModelReadError
from bncheck.readers.codecs.h5util import is_bfloat16, lookup
from bncheck.readers.keras.keras_archive import (
    WEIGHTS_MEMBER,
    ZIP_ERRORS,
    inflate,
    members_by_name,
)
from bncheck.records import record

_COPY_CHUNK = 1 << 20


class WriteError(ModelReadError):
    """OUT could not be written, or what was written is not MODEL with new statistics: one
    line, exit code 3, and nothing written."""


@record
class NewStatistics:
    """The statistics to write for one layer, and where they go."""

    moving_mean: np.ndarray
    moving_variance: np.ndarray
    mean_location: str
    """Dataset path of ``moving_mean`` (inside the ``.h5`` file or ``model.weights.h5``), as the
    reader resolved it: components below the root, each a hard link."""
    variance_location: str


#: A byte range ``(start, end)`` of an HDF5 file that writing may change.
Extent = tuple[int, int]


def write_model(source: str, target: str, kind: str, updates: Mapping[str, NewStatistics]) -> None:
    """Write ``target`` as ``source`` with ``updates`` applied; ``kind`` is ``keras`` or ``h5``.
    Any failure (permissions, a full disk, a member that cannot be read, a check that fails) is
    a one-line ``WriteError`` and leaves ``target`` as it was."""
    try:
        before = _sha256(source)
        with _atomic_target(source, target) as temporary:
            if kind == "h5":
                shutil.copyfile(source, temporary)
                changed = _overwrite(temporary, updates)
                with open(source, "rb") as original, open(temporary, "rb") as written:
                    _compare(original, written, changed, "the written file")
            else:
                _rewrite_archive(source, temporary, updates)
            if _sha256(source) != before:
                raise WriteError(f"{source} changed while {target} was written; nothing written")
    except OSError as exc:
        raise WriteError(f"cannot write {target}: {exc.strerror or exc}") from None
    except ZIP_ERRORS as exc:
        raise WriteError(f"cannot write {target}: corrupt zip archive ({exc})") from None
    except WriteError:
        raise
    except ModelReadError as exc:
        raise WriteError(f"cannot write {target}: {exc}") from None


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _atomic_target(source: str, target: str) -> Iterator[str]:
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise WriteError(f"cannot write {target}: no such directory {directory}")
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory
    )
    os.close(handle)
    try:
        yield temporary
        # MODEL's permissions, less what a file from elsewhere should not hand on: setuid,
        # setgid, sticky, and writing by others.
        os.chmod(temporary, stat.S_IMODE(os.stat(source).st_mode) & 0o755)
        os.replace(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _overwrite(path: str, updates: Mapping[str, NewStatistics]) -> list[Extent]:
    """Write the new statistics into the HDF5 file at ``path``; the byte ranges they occupy."""
    written: dict[str, np.ndarray] = {}
    extents: dict[Extent, str] = {}
    with h5py.File(path, "r+") as h5:
        for statistics in updates.values():
            for location, values in (
                (statistics.mean_location, statistics.moving_mean),
                (statistics.variance_location, statistics.moving_variance),
            ):
                dataset = _dataset(h5, location)
                extent = _extent(dataset, location)
                if extent in extents:
                    raise WriteError(f"{location} and {extents[extent]} are the same dataset")
                extents[extent] = location
                written[location] = _store(dataset, values)
    ordered = sorted(extents)
    for (_, end), (start, _) in zip(ordered, ordered[1:], strict=False):
        if start < end:
            raise WriteError("two of the datasets to write share bytes in the file")
    with h5py.File(path, "r") as h5:
        for location, stored in written.items():
            if np.asarray(_dataset(h5, location)[()]).tobytes() != stored.tobytes():
                raise WriteError(f"{location} does not read back as the values written")
    return ordered


def _dataset(h5: h5py.File, location: str) -> h5py.Dataset:
    """The dataset at ``location``, resolved exactly as the reader resolved it."""
    dataset = lookup(h5, location)
    if not isinstance(dataset, h5py.Dataset):
        raise WriteError(f"{location} is not a dataset of the model")
    return dataset


def _extent(dataset: h5py.Dataset, location: str) -> Extent:
    """The bytes a dataset's values occupy; only a contiguous, allocated dataset has them, and
    only such a one is written (Keras writes no other kind)."""
    offset = dataset.id.get_offset()
    size = dataset.id.get_storage_size()
    if offset is None or size != dataset.size * dataset.dtype.itemsize or dataset.external:
        raise WriteError(
            f"{location} is not stored as one contiguous array in the file, as Keras writes it"
        )
    return offset, offset + size


def _store(dataset: h5py.Dataset, values: np.ndarray) -> np.ndarray:
    """Write ``values`` in the dataset's type; what was stored."""
    values = np.asarray(values, dtype=np.float32).reshape(dataset.shape)
    if is_bfloat16(dataset):
        # Keras 3 stores bfloat16 as the top 16 bits of a float32: round to nearest even.
        bits = values.view(np.uint32).astype(np.uint64)
        bits += 0x7FFF + ((bits >> 16) & 1)
        stored = (bits >> 16).astype(np.uint16).view(dataset.dtype)
    else:
        stored = values.astype(dataset.dtype)
    dataset[...] = stored
    return stored


def _compare(original: IO[bytes], written: IO[bytes], extents: list[Extent], what: str) -> None:
    """``written`` must hold ``original``'s bytes, but inside ``extents``."""
    position = 0
    while True:
        old = original.read(_COPY_CHUNK)
        new = written.read(_COPY_CHUNK)
        if old == new:
            if not old:
                return
        elif len(old) != len(new) or _outside(old, new, position, extents):
            raise WriteError(
                f"{what} differs from the model outside the statistics it was to change; "
                "nothing written"
            )
        position += len(old)


def _outside(old: bytes, new: bytes, position: int, extents: list[Extent]) -> bool:
    """Whether two equally long chunks at ``position`` differ anywhere outside ``extents``."""
    differs = np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8)
    allowed = np.zeros(len(old), bool)
    for start, end in extents:
        low, high = max(start - position, 0), min(end - position, len(old))
        if low < high:
            allowed[low:high] = True
    return bool(np.any(differs & ~allowed))


def _rewrite_archive(source: str, target: str, updates: Mapping[str, NewStatistics]) -> None:
    with tempfile.TemporaryDirectory(prefix="bncheck-") as scratch:
        weights = Path(scratch) / WEIGHTS_MEMBER
        with zipfile.ZipFile(source) as archive:
            members = members_by_name(archive)
            if WEIGHTS_MEMBER not in members:
                raise WriteError(f"{source} has no {WEIGHTS_MEMBER}")
            with open(weights, "wb") as copy:
                inflate(archive, members[WEIGHTS_MEMBER], copy)
            changed = _overwrite(str(weights), updates)
            with archive.open(WEIGHTS_MEMBER) as original, open(weights, "rb") as written:
                _compare(original, written, changed, WEIGHTS_MEMBER)
            with zipfile.ZipFile(target, "w") as rebuilt:
                for info in archive.infolist():
                    if info.filename == WEIGHTS_MEMBER:
                        entry = _same_entry(info, weights.stat().st_size)
                        with open(weights, "rb") as src, rebuilt.open(entry, "w") as dst:
                            shutil.copyfileobj(src, dst, _COPY_CHUNK)
                    else:
                        with archive.open(info) as src, rebuilt.open(_same_entry(info), "w") as dst:
                            shutil.copyfileobj(src, dst, _COPY_CHUNK)
            _check_archive(archive, target, weights)


def _check_archive(archive: zipfile.ZipFile, target: str, weights: Path) -> None:
    """The rebuilt archive, read back: MODEL's members in order, each with MODEL's bytes but
    the weights, which are the edited file's."""
    with zipfile.ZipFile(target) as rebuilt:
        if [info.filename for info in rebuilt.infolist()] != archive.namelist():
            raise WriteError("the written archive's members differ from the model's")
        for info in archive.infolist():
            with rebuilt.open(info.filename) as new:
                if info.filename == WEIGHTS_MEMBER:
                    with open(weights, "rb") as old:
                        _compare(old, new, [], info.filename)
                else:
                    with archive.open(info) as old:
                        _compare(old, new, [], info.filename)


def _same_entry(info: zipfile.ZipInfo, size: int | None = None) -> zipfile.ZipInfo:
    """A fresh entry with the original's name, timestamp, attributes and compression."""
    entry = zipfile.ZipInfo(info.filename, date_time=info.date_time)
    entry.compress_type = info.compress_type
    entry.external_attr = info.external_attr
    entry.create_system = info.create_system
    entry.comment = info.comment
    entry.file_size = info.file_size if size is None else size
    return entry
