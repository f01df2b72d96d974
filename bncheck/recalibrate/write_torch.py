"""Writing new running statistics into a PyTorch zip archive: a state dict or pickled module
saved with ``torch.save``, or a TorchScript archive.

Each storage's bytes are one uncompressed member, ``<name>/data/<key>``; the pickle (which is
read by ``pickle_vm`` and never run) says which view of which storage each ``running_mean`` and
``running_var`` is. Those bytes are overwritten in their stored type and byte order, and the
changed members' CRC-32 is set wherever the archive records it: the local header (or the data
descriptor after the member, where ``torch.save`` puts it) and the central directory. Every
other byte stays as it was.

Refused, with one line: the legacy format (before PyTorch 1.6, or without the zip format), a
compressed storage member, and a storage that holds any tensor besides the statistics written
(another layer's, a parameter, a tensor of the same bytes under another name): writing it would
change that tensor too.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, BinaryIO

from bncheck import formats
from bncheck.readers.framework_signatures import LEGACY_MAGIC, data_pickle_member
from bncheck.readers.pytorch import torch_archive
from bncheck.readers.pytorch import torch_files as pytorch
from bncheck.readers.pytorch.pickle_vm import PickledObject, StorageRef, TensorRef
from bncheck.recalibrate.splice import (
    Patch,
    Statistics,
    Stored,
    check_layers,
    check_read_back,
    encode,
    write_patched,
)
from bncheck.recalibrate.write import WriteError

_ARRAYS = ("running_mean", "running_var")
_LOCAL_HEADER = b"PK\x03\x04"
_CENTRAL_HEADER = b"PK\x01\x02"
_DATA_DESCRIPTOR = b"PK\x07\x08"
#: General purpose flag: the CRC and sizes follow the data, in a data descriptor.
_HAS_DESCRIPTOR = 0x08


def write(source: str, target: str, statistics: Statistics) -> None:
    """Write ``target`` as the PyTorch archive ``source`` with new running statistics."""
    written: dict[str, tuple[Stored, Stored]] = {}

    def patches() -> list[Patch]:
        with open(source, "rb") as handle:
            if handle.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
                raise WriteError(
                    f"{source} is in PyTorch's legacy format (torch.save before PyTorch 1.6, or "
                    "_use_new_zipfile_serialization=False), which bncheck does not write; "
                    "save it again with torch.save in PyTorch 1.6 or later"
                )
        with formats.open_zip(source) as archive, open(source, "rb") as handle:
            return _patches(source, archive, handle, statistics, written)

    def check(copy: str) -> None:
        with formats.open_zip(copy) as archive:
            for info in archive.infolist():
                if "/data/" in info.filename:
                    archive.read(info)  # zipfile checks each member's CRC-32 as it reads
        check_read_back(pytorch.read(copy).layers, written)

    write_patched(source, target, patches, check)


def _patches(
    source: str,
    archive: zipfile.ZipFile,
    handle: BinaryIO,
    statistics: Statistics,
    written: dict[str, tuple[Stored, Stored]],
) -> list[Patch]:
    torch_file = torch_archive.open_zip(archive)
    layers = {path: (root, candidate) for path, root, candidate in pytorch.bn_tensors(torch_file)}
    check_layers(statistics, list(layers), source)
    top = (data_pickle_member(archive.namelist()) or "").split("/", 1)[0]
    ours: dict[int, str] = {}
    by_storage: dict[str, list[tuple[int, bytes, str]]] = {}
    for path, values in statistics.items():
        root, candidate = layers[path]
        stored = []
        for leaf, array in zip(_ARRAYS, values, strict=True):
            what = f"{path} {leaf}"
            tensor = root.tensors[candidate.names[leaf]]
            key, start, _ = torch_file.span(tensor)
            data = encode(array, tensor.dtype, tensor.numel, what, torch_file.big_endian)
            stored.append(Stored(data, tensor.dtype, torch_file.big_endian))
            ours[id(tensor)] = what
            by_storage.setdefault(key, []).append((start, data, what))
        written[path] = (stored[0], stored[1])
    _refuse_shared(torch_file, by_storage, ours)
    found: list[Patch] = []
    for key, views in by_storage.items():
        info = _member(archive, f"{top}/data/{key}")
        data_start = _data_start(handle, info)
        member = bytearray(_read(handle, data_start, info.file_size))
        for start, data, what in views:
            if start + len(data) > len(member):
                raise WriteError(f"{what} runs past its storage member {info.filename}")
            member[start : start + len(data)] = data
            found.append(Patch(data_start + start, data, what))
        found += _crc_patches(archive, handle, info, data_start, zlib.crc32(member))
    return found


def _refuse_shared(
    torch_file: torch_archive.TorchFile,
    by_storage: dict[str, list[tuple[int, bytes, str]]],
    ours: dict[int, str],
) -> None:
    """No tensor but those written lies in a storage written: it would change with them."""
    names = {
        id(tensor): name
        for root in pytorch.find_roots(torch_file.root)
        for name, tensor in root.tensors.items()
    }
    for tensor in _tensors(torch_file.root):
        if tensor.storage.key in by_storage and id(tensor) not in ours:
            what = by_storage[tensor.storage.key][0][2]
            other = names.get(id(tensor), "a tensor the pickle holds")
            raise WriteError(
                f"{what}: its storage {tensor.storage.key} also holds {other!r}, which writing "
                "it would change too; not written"
            )
    for storage in _bare_storages(torch_file.root):
        if storage.key in by_storage:
            raise WriteError(
                f"{by_storage[storage.key][0][2]}: its storage {storage.key} is also held by the "
                "pickle as a storage of its own, which writing it would change too; not written"
            )
    for key, views in by_storage.items():
        if len(views) > 1:
            raise WriteError(f"{views[0][2]} and {views[1][2]} share storage {key}; not written")
    held = _references(torch_file.root)
    for identity, what in ours.items():
        if held[identity] > 1:
            raise WriteError(
                f"{what}: the pickle holds the same tensor under another name too, which "
                "writing it would change; not written"
            )


def _tensors(top: Any) -> Iterator[TensorRef]:
    """Every tensor of the object the pickle describes, once each."""
    seen: set[int] = set()
    pending = [top]
    while pending:
        node = pending.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, TensorRef):
            yield node
        else:
            pending.extend(_children(node))


def _bare_storages(top: Any) -> Iterator[StorageRef]:
    """Every storage the pickle holds outside a tensor (``tensor.storage()`` saved as such):
    another view of the bytes of the tensors that share it."""
    seen: set[int] = set()
    pending = [top]
    while pending:
        node = pending.pop()
        if id(node) in seen or isinstance(node, TensorRef):
            continue
        seen.add(id(node))
        if isinstance(node, StorageRef):
            yield node
        else:
            pending.extend(_children(node))


def _references(top: Any) -> Counter[int]:
    """How many places of the object the pickle describes hold each tensor (by identity): a
    tensor the pickle memoised and put under two names is held twice."""
    held: Counter[int] = Counter()
    seen: set[int] = set()
    pending = [top]
    while pending:
        node = pending.pop()
        if isinstance(node, TensorRef):
            held[id(node)] += 1
        elif id(node) not in seen:
            seen.add(id(node))
            pending.extend(_children(node))
    return held


def _children(node: Any) -> list[Any]:
    if isinstance(node, dict):
        return [*node.keys(), *node.values(), *getattr(node, "attributes", {}).values()]
    if isinstance(node, (list, tuple, set, frozenset)):
        return list(node)
    if isinstance(node, PickledObject):
        return [node.target, node.arguments, node.state]
    return []


def _member(archive: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise WriteError(f"storage {name} is missing from the archive") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise WriteError(f"{name} is compressed; PyTorch stores storages uncompressed")
    return info


def _read(handle: BinaryIO, offset: int, size: int) -> bytes:
    handle.seek(offset)
    data = handle.read(size)
    if len(data) != size:
        raise WriteError("the archive ends inside a member")
    return data


def _data_start(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    header = _read(handle, info.header_offset, 30)
    if header[:4] != _LOCAL_HEADER:
        raise WriteError(f"{info.filename} has no local header where the directory says")
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    return info.header_offset + 30 + name_length + extra_length


def _crc_patches(
    archive: zipfile.ZipFile, handle: BinaryIO, info: zipfile.ZipInfo, data_start: int, crc: int
) -> list[Patch]:
    """The new CRC-32 of a member, wherever the archive records the old one."""
    new = struct.pack("<I", crc)
    what = f"the CRC-32 of {info.filename}"
    places = []
    local = info.header_offset + 14
    (recorded,) = struct.unpack("<I", _read(handle, local, 4))
    flags = struct.unpack("<H", _read(handle, info.header_offset + 6, 2))[0]
    if recorded == info.CRC:
        places.append(local)
    elif not (flags & _HAS_DESCRIPTOR and recorded == 0):
        raise WriteError(f"{what} in its local header is not the directory's")
    if flags & _HAS_DESCRIPTOR:
        after = data_start + info.compress_size
        descriptor = after + 4 if _read(handle, after, 4) == _DATA_DESCRIPTOR else after
        if struct.unpack("<I", _read(handle, descriptor, 4))[0] != info.CRC:
            raise WriteError(f"{what} in its data descriptor is not the directory's")
        places.append(descriptor)
    places.append(_central_record(archive, handle, info) + 16)
    return [Patch(place, new, what) for place in places]


def _central_record(archive: zipfile.ZipFile, handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a member's record lies in the central directory (zipfile lists them in order)."""
    position = archive.start_dir
    for entry in archive.infolist():
        record = _read(handle, position, 46)
        if record[:4] != _CENTRAL_HEADER:
            raise WriteError("the archive's central directory is not where its end record says")
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", record, 28)
        if entry is info:
            name = _read(handle, position + 46, name_length)
            if name.decode("utf-8", "replace") != info.orig_filename:
                raise WriteError(f"the central directory's record of {info.filename} is not its")
            return position
        position += 46 + name_length + extra_length + comment_length
    raise WriteError(f"{info.filename} is not in the central directory")
