"""The containers ``torch.save`` and ``torch.jit.save`` write, read without PyTorch.

- **Zip archives** (PyTorch 1.6 and later, and every TorchScript archive): ``<name>/data.pkl`` is
  the pickle, ``<name>/data/<key>`` holds each storage's bytes, ``<name>/byteorder`` says their
  byte order. TorchScript archives add ``<name>/code/`` (the compiled model) and
  ``<name>/constants.pkl``.
- **The legacy format** (``_use_new_zipfile_serialization=False`` and PyTorch before 1.6): four
  pickles in a row (a magic number, the protocol version, system information, the object), a
  pickled list of storage keys, then each storage as an 8-byte little-endian element count and
  its bytes, in that order.

The pickle goes through ``pickle_vm``, which runs nothing and works within a budget. Only the
bytes of the tensors asked for are read, each checked against its storage and the storage
against the file. Each storage is read at most once, in one forward pass over the views asked
for, and each distinct view is decoded once: a storage shared by hundreds of layers costs its
size once. Distinct views of one storage may not add up to more than the storage holds, and a
deflated member is inflated only as far as those views need, and not beyond
``MAX_INFLATION_RATIO`` times its compressed size (PyTorch stores members uncompressed).
"""

from __future__ import annotations

import bisect
import mmap
import re
import struct
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.readers.codecs import tensor_bytes
from bncheck.readers.framework_signatures import data_pickle_member
from bncheck.readers.pytorch import pickle_vm
from bncheck.readers.pytorch.pickle_vm import GlobalRef, PickleLog, StorageRef, TensorRef

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
#: A pickle bncheck reads whole; PyTorch's are kilobytes (the tensors are elsewhere).
MAX_PICKLE_BYTES = 256 << 20
#: Storage keys are short tokens; anything else could name another member.
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")
#: How many times its compressed size a deflated member may inflate to, beyond
#: ``_SMALL_INFLATION``. Real weights barely compress; a crafted run of zeros inflates a
#: thousandfold, so 1 MB on disk would cost a GiB of inflation.
MAX_INFLATION_RATIO = 100
_SMALL_INFLATION = 1 << 20

#: A distinct view of a storage: its key, first byte, byte count, element type and shape.
ViewKey = tuple[str, int, int, str, tuple[int, ...]]
#: Reads byte ranges (sorted, disjoint) of the storage with the given key, in one pass.
RangeReader = Callable[[str, list[tuple[int, int]]], list[bytes]]


@dataclass
class TorchFile:
    """A PyTorch file's object tree, and a way to read the bytes of its tensors."""

    root: Any
    """What ``torch.load`` would return, with ``pickle_vm`` records in place of objects."""
    log: PickleLog
    container: str
    """``zip``, ``torchscript`` or ``legacy``."""
    roots: dict[str, StorageRef]
    """Each storage by key, as the pickle first declared it (its whole size)."""
    read_ranges: RangeReader
    big_endian: bool = False
    arrays: dict[ViewKey, np.ndarray] = field(default_factory=dict)
    """Each view read so far, decoded once and read-only."""
    read_bytes: dict[str, int] = field(default_factory=dict)
    """Bytes of the distinct views read from each storage."""

    def read_tensors(self, tensors: Iterable[TensorRef]) -> None:
        """Reads the views of ``tensors`` not read yet: each storage once, in one pass."""
        wanted: dict[str, dict[ViewKey, TensorRef]] = {}
        for tensor in tensors:
            key = self._view(tensor)
            if key not in self.arrays:
                wanted.setdefault(key[0], {})[key] = tensor
        for storage_key, views in wanted.items():
            root = self.roots[storage_key]
            total = self.read_bytes.get(storage_key, 0) + sum(view[2] for view in views)
            size = root.numel * tensor_bytes.itemsize(root.dtype)
            if total > size:
                raise ModelReadError(
                    f"the tensors read from storage {storage_key} overlap: {total} bytes of "
                    f"views of a storage of {size}"
                )
            self.read_bytes[storage_key] = total
            ranges = _merged((view[1], view[2]) for view in views)
            found = self.read_ranges(storage_key, ranges)
            firsts = [first for first, _ in ranges]
            for view, tensor in views.items():
                start, length = view[1], view[2]
                index = bisect.bisect_right(firsts, start) - 1
                skip = start - firsts[index]
                raw = found[index][skip : skip + length]
                array = _view(raw, tensor, self.big_endian)
                array.flags.writeable = False
                self.arrays[view] = array

    def read_tensor(self, tensor: TensorRef) -> np.ndarray:
        self.read_tensors([tensor])
        return self.arrays[self._view(tensor)]

    def span(self, tensor: TensorRef) -> tuple[str, int, int]:
        """The storage holding a BatchNorm tensor's bytes, and where in it they start and how
        many they are; ``ModelReadError`` for a tensor that is not a contiguous vector inside
        its storage."""
        key, start, length, _, _ = self._view(tensor)
        return key, start, length

    def _view(self, tensor: TensorRef) -> ViewKey:
        root = self.roots.get(tensor.storage.key)
        if root is None:
            raise ModelReadError(f"storage {tensor.storage.key} is not in the file")
        start, length = _byte_span(tensor, tensor.storage)
        return (root.key, start, length, tensor.dtype, tensor.shape)


def _merged(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, disjoint (start, length) ranges covering ``spans``."""
    merged: list[list[int]] = []
    for start, length in sorted(spans):
        if merged and start <= merged[-1][0] + merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], start + length - merged[-1][0])
        else:
            merged.append([start, length])
    return [(start, length) for start, length in merged]


def open_zip(archive: zipfile.ZipFile) -> TorchFile:
    names = archive.namelist()
    member = data_pickle_member(names)
    if member is None:
        raise ModelReadError("zip archive has no single <name>/data.pkl: not a PyTorch file")
    top = member.split("/", 1)[0]
    torchscript = f"{top}/constants.pkl" in names or any(
        name.startswith(f"{top}/code/") for name in names
    )
    big_endian = _byteorder(archive, f"{top}/byteorder") == "big"
    storages: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ModelReadError(f"unsupported persistent id in {member}: {pickle_vm.short(pid)}")
        _, storage_type, key, _location, numel = pid
        storage = StorageRef(_storage_key(key), _storage_dtype(storage_type), _count(numel))
        return storages.setdefault(storage.key, storage)

    root, log, _ = pickle_vm.load(_read_member(archive, member), persistent_load)

    def read_ranges(key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        storage = storages[key]
        name = f"{top}/data/{key}"
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise ModelReadError(f"storage {name} is missing from the archive") from None
        size = storage.numel * tensor_bytes.itemsize(storage.dtype)
        if info.file_size < size:
            raise ModelReadError(
                f"storage {name} holds {info.file_size} bytes, the pickle says {size}"
            )
        _check_inflation(info, ranges[-1][0] + ranges[-1][1])
        found = []
        with archive.open(info) as handle:
            for start, length in ranges:  # sorted: a deflated member is inflated once
                handle.seek(start)
                found.append(handle.read(length))
        return found

    container = "torchscript" if torchscript else "zip"
    return TorchFile(root, log, container, storages, read_ranges, big_endian)


def _check_inflation(info: zipfile.ZipInfo, needed: int) -> None:
    """Refuses to inflate ``needed`` bytes of a deflated member when that is more than
    ``MAX_INFLATION_RATIO`` times its compressed size."""
    if info.compress_type == zipfile.ZIP_STORED or needed <= _SMALL_INFLATION:
        return
    if needed > MAX_INFLATION_RATIO * max(info.compress_size, 1):
        raise ModelReadError(
            f"{info.filename} would inflate {info.compress_size} compressed bytes to {needed}, "
            f"more than {MAX_INFLATION_RATIO} times; PyTorch stores its members uncompressed"
        )


def open_legacy(handle: BinaryIO, file_size: int) -> TorchFile:
    # Mapped, the pickles are read by C code (and never past the file's end): the opcode loop
    # runs a third faster than through Python-level reads.
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        return _open_legacy(mapped, handle, file_size)


def _open_legacy(reader: mmap.mmap, handle: BinaryIO, file_size: int) -> TorchFile:

    def next_pickle(persistent_load: Callable[[Any], Any] = _no_storages) -> Any:
        value, log, _ = pickle_vm.load(reader, persistent_load)
        return value, log

    magic, _ = next_pickle()
    protocol, _ = next_pickle()
    if magic != _LEGACY_MAGIC_NUMBER or protocol != _LEGACY_PROTOCOL:
        raise ModelReadError("not a PyTorch legacy file (wrong magic number or protocol)")
    system, _ = next_pickle()
    if isinstance(system, dict) and system.get("little_endian") is False:
        raise ModelReadError("big-endian PyTorch legacy files are not supported")
    roots: dict[str, StorageRef] = {}

    def persistent_load(pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise ModelReadError(f"unsupported persistent id: {pickle_vm.short(pid)}")
        _, storage_type, key, _location, numel, view = pid
        root = StorageRef(_storage_key(key), _storage_dtype(storage_type), _count(numel))
        known = roots.setdefault(root.key, root)
        if view is None:
            return known
        if not (isinstance(view, tuple) and len(view) == 3):
            raise ModelReadError(f"unsupported storage view: {pickle_vm.short(view)}")
        _view_key, offset, view_size = view
        offset, view_size = _count(offset), _count(view_size)
        if offset + view_size > known.numel:
            raise ModelReadError(f"storage view beyond storage {known.key}")
        return StorageRef(known.key, known.dtype, view_size, offset)

    root_object, log = next_pickle(persistent_load)
    keys, _ = next_pickle()
    if not isinstance(keys, list) or not all(isinstance(key, str) for key in keys):
        raise ModelReadError("the legacy file's storage key list is malformed")
    starts = _legacy_storage_starts(handle, reader.tell(), file_size, keys, roots)

    def read_ranges(key: str, ranges: list[tuple[int, int]]) -> list[bytes]:
        if key not in starts:
            raise ModelReadError(f"storage {key} is not in the file")
        found = []
        for start, length in ranges:
            handle.seek(starts[key] + start)
            found.append(handle.read(length))
        return found

    return TorchFile(root_object, log, "legacy", roots, read_ranges)


def _legacy_storage_starts(
    handle: BinaryIO, position: int, file_size: int, keys: list[str], roots: dict[str, StorageRef]
) -> dict[str, int]:
    """Where each storage's bytes start, walking the 8-byte counts after the pickles."""
    starts: dict[str, int] = {}
    for key in keys:
        if key not in roots:
            raise ModelReadError(f"storage {key} is listed but never used")
        handle.seek(position)
        header = handle.read(8)
        if len(header) != 8:
            raise ModelReadError("the file ends before all its storages")
        (count,) = struct.unpack("<q", header)
        storage = roots[key]
        if count != storage.numel:
            raise ModelReadError(
                f"storage {key} holds {count} values, the pickle says {storage.numel}"
            )
        position += 8
        starts[key] = position
        position += count * tensor_bytes.itemsize(storage.dtype)
        if position > file_size:
            raise ModelReadError("the file ends before all its storages")
    return starts


def _no_storages(pid: Any) -> Any:
    raise ModelReadError("a persistent id where none belongs")


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > MAX_PICKLE_BYTES:
        raise ModelReadError(f"{name} is {info.file_size} bytes, more than any PyTorch pickle")
    _check_inflation(info, info.file_size)
    return archive.read(info)


def _byteorder(archive: zipfile.ZipFile, name: str) -> str:
    try:
        with archive.open(name) as handle:
            text = handle.read(16).decode("ascii", "replace").strip()
    except KeyError:
        return "little"  # archives before PyTorch 1.10 have no byteorder member: little-endian
    if text not in ("little", "big"):
        raise ModelReadError(f"unknown byte order {text!r} in {name}")
    return text


def _storage_key(key: Any) -> str:
    if not isinstance(key, str) or not _STORAGE_KEY.match(key):
        raise ModelReadError(f"invalid storage key {pickle_vm.short(key)}")
    return key


def _storage_dtype(storage_type: Any) -> str:
    if isinstance(storage_type, GlobalRef) and storage_type.module in ("torch", "torch.storage"):
        dtype = pickle_vm.STORAGE_DTYPES.get(storage_type.name)
        if dtype is not None:
            return dtype
    raise ModelReadError(f"unsupported storage type {pickle_vm.short(storage_type)}")


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**48:
        raise ModelReadError(f"invalid storage size {pickle_vm.short(value)}")
    return value


def _byte_span(tensor: TensorRef, storage: StorageRef) -> tuple[int, int]:
    """Start and length, in bytes from the start of the storage's root, of a contiguous 0-D or
    1-D tensor (what BatchNorm buffers are), checked against the storage."""
    if len(tensor.shape) > 1 or (tensor.shape and tensor.shape[0] > 1 and tensor.stride[0] != 1):
        raise ModelReadError("a BatchNorm tensor that is not a contiguous vector")
    size = tensor_bytes.itemsize(tensor.dtype)
    base = storage.offset * tensor_bytes.itemsize(storage.dtype)
    length = tensor.numel * size
    start = base + tensor.offset * size
    if start + length > base + storage.numel * tensor_bytes.itemsize(storage.dtype):
        raise ModelReadError(
            f"a tensor of {tensor.numel} values at offset {tensor.offset} runs past its storage "
            f"({storage.numel} values)"
        )
    return start, length


def _view(raw: bytes, tensor: TensorRef, big_endian: bool) -> np.ndarray:
    if len(raw) != tensor.numel * tensor_bytes.itemsize(tensor.dtype):
        raise ModelReadError("the file ends inside a tensor")
    return tensor_bytes.decode(raw, tensor.dtype, big_endian).reshape(tensor.shape)
