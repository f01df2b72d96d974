"""Writing new moving statistics into a SavedModel's variables: a TensorFlow tensor bundle
(``variables/variables.index`` and ``variables/variables.data-*``).

OUT is a new folder: a copy of the SavedModel in which only these bytes differ:

- each written tensor's bytes in its data shard, in its stored type and byte order;
- the masked CRC-32C of each written tensor in its index entry (a fixed 4-byte field of the
  ``BundleEntryProto``, so the entry keeps its length);
- the masked CRC-32C of each index block holding such an entry.

So ``tf.train.load_checkpoint`` reads back the new values of the written tensors and, bit for
bit, the old values of every other one. Each layer's variables are the ones bncheck's reader
found for it (``bncheck.readers.tensorflow.savedmodel``), by the layer paths it reports.

Refused, with one line: a SavedModel holding a link or anything but files and folders (every
file is copied, and none from elsewhere), an OUT that exists, a compressed index block, a
partitioned variable, and tensors placed on the same bytes as another.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
from math import prod
from pathlib import Path

from bncheck.model import ModelDescription
from bncheck.readers.codecs.crc32c import crc32c, mask
from bncheck.readers.codecs.farmhash import fingerprint64
from bncheck.readers.tensorflow import savedmodel
from bncheck.readers.tensorflow.sstable import FOOTER_BYTES, read_table, varint
from bncheck.readers.tensorflow.tensor_bundle import INDEX_SUFFIX, TensorBundle, data_shard_name
from bncheck.readers.tensorflow.tf_protos import message_class
from bncheck.recalibrate.splice import (
    FIXED32,
    Patch,
    Statistics,
    Stored,
    apply,
    atomic_folder,
    check_disjoint,
    check_layers,
    check_read_back,
    compare_outside,
    encode,
    guarded,
    wire_fields,
)
from bncheck.recalibrate.write import WriteError, _sha256
from bncheck.records import record

_ARRAYS = ("moving_mean", "moving_variance")
#: ``BundleEntryProto.crc32c``.
_CRC_FIELD = 6
_UNCOMPRESSED = 0


@record
class IndexEntry:
    """One entry of the index, where its value lies in the file."""

    key: bytes
    value_start: int
    value_end: int
    block: tuple[int, int]
    """The data block holding it: offset and size of its contents."""


def write_savedmodel(source: str, target: str, statistics: Statistics) -> None:
    """Write the folder ``target`` as the SavedModel ``source`` with new moving statistics."""
    with guarded(target):
        if os.path.islink(source) or os.path.islink(target):
            raise WriteError(f"{source} or {target} is a symbolic link; bncheck writes no link")
        if os.path.exists(target) and os.path.samefile(source, target):
            raise WriteError(f"refusing to overwrite {source} (the model itself): name another OUT")
        files, folders = _entries(Path(source))
        before = {name: _sha256(os.path.join(source, name)) for name in files}
        written: dict[str, tuple[Stored, Stored]] = {}
        patches = _patches(source, statistics, written)
        with atomic_folder(source, target) as temporary:
            for name in folders:  # empty ones too (a SavedModel's assets/)
                os.makedirs(os.path.join(temporary, name), exist_ok=True)
            for name in files:
                copy = os.path.join(temporary, name)
                os.makedirs(os.path.dirname(copy), exist_ok=True)
                shutil.copyfile(os.path.join(source, name), copy)
                os.chmod(copy, os.stat(os.path.join(source, name)).st_mode & 0o755)
            for name in files:
                found = patches.get(name, [])
                spans = check_disjoint(found, os.path.getsize(os.path.join(source, name)))
                apply(os.path.join(temporary, name), found)
                compare_outside(
                    os.path.join(source, name), os.path.join(temporary, name), spans, name
                )
            _refresh_fingerprint(temporary)
            description = savedmodel.read(temporary)
            check_read_back(description.layers, written)
            keys = [key for group in _groups(description) for key in group]
            TensorBundle(os.path.join(temporary, *savedmodel.VARIABLES_PREFIX)).read_arrays(keys)
            if any(_sha256(os.path.join(source, name)) != before[name] for name in files):
                raise WriteError(f"{source} changed while {target} was written; nothing written")


#: A SavedModel's fingerprint (TensorFlow 2.12 on), its name and the most bytes it may take: it
#: is a handful of numbers.
FINGERPRINT = "fingerprint.pb"
_MAX_FINGERPRINT = 1 << 16


def _refresh_fingerprint(folder: str) -> None:
    """Write ``fingerprint.pb`` anew: among hashes of the graph, which is unchanged, it holds
    TensorFlow's Fingerprint64 of the checkpoint's index file, which the new statistics change
    (the index holds each tensor's CRC-32C). Every other field stays as it was."""
    path = os.path.join(folder, FINGERPRINT)
    if not os.path.isfile(path):
        return  # written before TensorFlow 2.12
    if os.path.getsize(path) > _MAX_FINGERPRINT:
        raise WriteError(f"{FINGERPRINT} holds more than {_MAX_FINGERPRINT} bytes")
    from google.protobuf.message import DecodeError

    fingerprint = message_class("FingerprintDef")()
    try:
        fingerprint.ParseFromString(Path(path).read_bytes())
    except DecodeError:
        raise WriteError(f"{FINGERPRINT} is not a SavedModel fingerprint") from None
    index = os.path.join(folder, *savedmodel.VARIABLES_PREFIX) + INDEX_SUFFIX
    fingerprint.checkpoint_hash = fingerprint64(Path(index).read_bytes())
    Path(path).write_bytes(fingerprint.SerializeToString(deterministic=True))


#: The most files and folders a SavedModel written back may hold.
MAX_ENTRIES = 100_000
#: A file larger than this must have most of its bytes on disk: a sparse file would be written
#: out in full, however little the input takes.
_SPARSE_ABOVE = 1 << 20


def _entries(root: Path) -> tuple[list[str], list[str]]:
    """Every file and every folder of the SavedModel, relative to it; refused when it holds a
    link (symbolic, or a file another path also names), a sparse file, or anything but files
    and folders."""
    found = []
    folders = []
    entries = 0
    for folder, directories, names in os.walk(root):
        for name in [*directories, *names]:
            entries += 1
            if entries > MAX_ENTRIES:
                raise WriteError(f"{root} holds more than {MAX_ENTRIES} files and folders")
            path = Path(folder, name)
            status = path.lstat()
            if stat.S_ISLNK(status.st_mode):
                raise WriteError(f"{path} is a symbolic link; bncheck copies no link")
            if stat.S_ISDIR(status.st_mode):
                folders.append(str(path.relative_to(root)))
                continue
            if not stat.S_ISREG(status.st_mode):
                raise WriteError(f"{path} is neither a file nor a folder")
            if status.st_nlink > 1:
                raise WriteError(
                    f"{path} is a hard link, a file other paths also name; bncheck copies no link"
                )
            stored = getattr(status, "st_blocks", None)
            if stored is not None and _sparse(status.st_size, stored * 512):
                raise WriteError(
                    f"{path} declares {status.st_size} bytes but stores {stored * 512} (a sparse "
                    "file); bncheck copies no sparse file"
                )
            found.append(str(path.relative_to(root)))
    return sorted(found), sorted(folders)


def _sparse(size: int, stored: int) -> bool:
    """Whether a file of ``size`` bytes with ``stored`` bytes on disk is mostly holes."""
    return size > _SPARSE_ABOVE and stored < size // 2


def _groups(description: ModelDescription) -> list[tuple[str, str]]:
    groups = () if description.checkpoint is None else description.checkpoint.groups
    return [
        (group.keys["moving_mean"], group.keys["moving_variance"])
        for group in groups
        if not group.missing_moving_stats
    ]


def _patches(
    source: str, statistics: Statistics, written: dict[str, tuple[Stored, Stored]]
) -> dict[str, list[Patch]]:
    """The bytes to change, by file relative to the SavedModel."""
    description = savedmodel.read(source)
    check_layers(statistics, [layer.path for layer in description.layers], source)
    contents = description.checkpoint
    assert contents is not None  # a SavedModel with layers has variables
    groups = {group.path: group for group in contents.groups if not group.missing_moving_stats}
    prefix = os.path.join(source, *savedmodel.VARIABLES_PREFIX)
    bundle = TensorBundle(prefix)
    index_name = os.path.join(*savedmodel.VARIABLES_PREFIX) + INDEX_SUFFIX
    with open(os.path.join(source, index_name), "rb") as handle:
        index = handle.read()
    read_table(index)  # every block and checksum checked, as the reader checks them
    entries = {entry.key: entry for entry in _index_entries(index)}
    regions = _regions(index, entries)
    patches: dict[str, list[Patch]] = {}
    new_crcs: dict[bytes, int] = {}
    for path, values in statistics.items():
        stored = []
        for leaf, array in zip(_ARRAYS, values, strict=True):
            what = f"{path} {leaf}"
            key = groups[path].keys[leaf]
            if key.encode() in new_crcs:
                raise WriteError(f"{what}: variable {key!r} is written twice; not written")
            entry = bundle.entries[key]
            if entry.slices:
                raise WriteError(f"{what} is a partitioned variable; not written")
            region = (entry.shard, entry.offset, entry.size)
            sharing = [other for other, place in regions.items() if _overlap(place, region)]
            if sharing != [key.encode()]:
                raise WriteError(f"{what} shares its bytes with another variable; not written")
            data = encode(array, entry.type.name, prod(entry.shape), what, bundle.big_endian)
            stored.append(Stored(data, entry.type.name, bundle.big_endian))
            shard = os.path.join(
                savedmodel.VARIABLES_PREFIX[0],
                data_shard_name(savedmodel.VARIABLES_PREFIX[1], entry.shard, bundle.shards),
            )
            patches.setdefault(shard, []).append(Patch(entry.offset, data, what))
            new_crcs[key.encode()] = mask(crc32c(data))
        written[path] = (stored[0], stored[1])
    patches[index_name] = _index_patches(index, entries, new_crcs)
    return patches


def _overlap(first: tuple[int, int, int], second: tuple[int, int, int]) -> bool:
    return (
        first[0] == second[0]
        and first[1] < second[1] + max(second[2], 1)
        and second[1] < first[1] + max(first[2], 1)
    )


def _regions(index: bytes, entries: dict[bytes, IndexEntry]) -> dict[bytes, tuple[int, int, int]]:
    """Where each entry's bytes lie: shard, offset and size (slices' entries included)."""
    proto = message_class("BundleEntryProto")
    regions = {}
    for key, entry in entries.items():
        if not key:
            continue  # the header
        parsed = proto()
        parsed.ParseFromString(index[entry.value_start : entry.value_end])
        if not parsed.slices:
            regions[key] = (parsed.shard_id, parsed.offset, parsed.size)
    return regions


def _index_patches(
    index: bytes, entries: dict[bytes, IndexEntry], new_crcs: dict[bytes, int]
) -> list[Patch]:
    """The new checksums of the written tensors' entries, and of the blocks holding them."""
    patches = []
    blocks: dict[tuple[int, int], bytearray] = {}
    for key, crc in new_crcs.items():
        entry = entries[key]
        fields = [
            field
            for field in wire_fields(index, entry.value_start, entry.value_end)
            if field.number == _CRC_FIELD
        ]
        if len(fields) != 1 or fields[0].wire_type != FIXED32:
            raise WriteError(f"the index entry of {key.decode(errors='replace')} has no checksum")
        position = fields[0].start
        new = struct.pack("<I", crc)
        patches.append(Patch(position, new, f"the checksum of {key.decode(errors='replace')}"))
        offset, size = entry.block
        contents = blocks.setdefault(entry.block, bytearray(index[offset : offset + size + 1]))
        contents[position - offset : position - offset + 4] = new
    for (offset, size), contents in blocks.items():
        patches.append(
            Patch(offset + size + 1, struct.pack("<I", mask(crc32c(bytes(contents)))), "a block")
        )
    return patches


def _index_entries(index: bytes) -> list[IndexEntry]:
    """Every entry of the index's data blocks, where its value lies in the file. The table was
    checked whole (``read_table``) before this walks it."""
    footer = len(index) - FOOTER_BYTES
    _, position = varint(index, footer, 64)
    _, position = varint(index, position, 64)
    index_offset, position = varint(index, position, 64)
    index_size, _ = varint(index, position, 64)
    found = []
    for _, handle_start, handle_end, _ in _block_entries(index, index_offset, index_size):
        offset, position = varint(index, handle_start, 64)
        size, _ = varint(index, position, 64)
        if position > handle_end:
            raise WriteError("the checkpoint index has a bad block handle")
        for key, start, end, block in _block_entries(index, offset, size):
            found.append(IndexEntry(key, start, end, block))
    return found


def _block_entries(
    index: bytes, offset: int, size: int
) -> list[tuple[bytes, int, int, tuple[int, int]]]:
    """A block's entries: key, and where the value lies in the file."""
    if index[offset + size] != _UNCOMPRESSED:
        raise WriteError("the checkpoint index is compressed, which bncheck does not write")
    (restarts,) = struct.unpack_from("<I", index, offset + size - 4)
    limit = offset + size - 4 * (restarts + 1)
    position = offset
    key = b""
    found = []
    while position < limit:
        shared, position = varint(index, position, 32)
        unshared, position = varint(index, position, 32)
        length, position = varint(index, position, 32)
        key = key[:shared] + index[position : position + unshared]
        position += unshared
        found.append((key, position, position + length, (offset, size)))
        position += length
    return found
