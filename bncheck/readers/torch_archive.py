"""The containers ``torch.save`` and ``torch.jit.save`` write, read without PyTorch.

- **Zip archives** (PyTorch 1.6 and later, and every TorchScript archive): ``<name>/data.pkl`` is
  the pickle, ``<name>/data/<key>`` holds each storage's bytes, ``<name>/byteorder`` says their
  byte order. TorchScript archives add ``<name>/code/`` (the compiled model) and
  ``<name>/constants.pkl``.
- **The legacy format** (``_use_new_zipfile_serialization=False`` and PyTorch before 1.6): four
  pickles in a row (a magic number, the protocol version, system information, the object), a
  pickled list of storage keys, then each storage as an 8-byte little-endian element count and
  its bytes, in that order.

The pickle goes through ``pickle_vm``, which runs nothing. Only the bytes of the tensors asked
for are read, each checked against its storage and the storage against the file.
"""

from __future__ import annotations

import re
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.readers import pickle_vm, tensor_bytes
from bncheck.readers.framework_signatures import data_pickle_member
from bncheck.readers.pickle_vm import GlobalRef, PickleLog, StorageRef, TensorRef

_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
#: A pickle bncheck reads whole; PyTorch's are kilobytes (the tensors are elsewhere).
MAX_PICKLE_BYTES = 256 << 20
#: Storage keys are short tokens; anything else could name another member.
_STORAGE_KEY = re.compile(r"^[A-Za-z0-9_]{1,64}$")


@dataclass
class TorchFile:
    """A PyTorch file's object tree, and a way to read the bytes of its tensors."""

    root: Any
    """What ``torch.load`` would return, with ``pickle_vm`` records in place of objects."""
    log: PickleLog
    container: str
    """``zip``, ``torchscript`` or ``legacy``."""
    read_tensor: Callable[[TensorRef], np.ndarray]


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
        storages.setdefault(storage.key, storage)
        return storage

    root, log, _ = pickle_vm.load(_read_member(archive, member), persistent_load)

    def read_tensor(tensor: TensorRef) -> np.ndarray:
        storage = storages[tensor.storage.key]
        name = f"{top}/data/{storage.key}"
        try:
            info = archive.getinfo(name)
        except KeyError:
            raise ModelReadError(f"storage {name} is missing from the archive") from None
        size = storage.numel * tensor_bytes.itemsize(storage.dtype)
        if info.file_size < size:
            raise ModelReadError(
                f"storage {name} holds {info.file_size} bytes, the pickle says {size}"
            )
        start, length = _byte_span(tensor, storage)
        with archive.open(info) as handle:
            handle.seek(start)
            raw = handle.read(length)
        return _view(raw, tensor, big_endian)

    container = "torchscript" if torchscript else "zip"
    return TorchFile(root, log, container, read_tensor)


def open_legacy(handle: BinaryIO, file_size: int) -> TorchFile:
    handle.seek(0)
    reader = pickle_vm.BoundedReader(handle, file_size)

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
    starts = _legacy_storage_starts(handle, handle.tell(), file_size, keys, roots)

    def read_tensor(tensor: TensorRef) -> np.ndarray:
        storage = tensor.storage
        if storage.key not in starts:
            raise ModelReadError(f"storage {storage.key} is not in the file")
        start, length = _byte_span(tensor, storage)
        handle.seek(starts[storage.key] + start)
        raw = handle.read(length)
        return _view(raw, tensor, big_endian=False)

    return TorchFile(root_object, log, "legacy", read_tensor)


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
    return archive.read(info)


def _byteorder(archive: zipfile.ZipFile, name: str) -> str:
    try:
        text = archive.read(name)[:16].decode("ascii", "replace").strip()
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
