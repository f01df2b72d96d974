"""TensorFlow tensor bundles, read without TensorFlow (``tensorflow/core/util/tensor_bundle``).

A bundle is what TF1 ``Saver``, TF2 ``tf.train.Checkpoint``, tf.keras ``save_weights`` in TF
format and both kinds of SavedModel (``variables/variables``) write: a prefix ``P`` with an index
``P.index`` and data shards ``P.data-00000-of-00002``, ``P.data-00001-of-00002``. The index is a
sorted table (``sstable.py``) whose entry under the empty key is a ``BundleHeaderProto`` (shard
count, byte order, format version) and whose every other entry is a ``BundleEntryProto``: a
tensor's type, shape, shard, offset, size and masked CRC-32C.

Opening a bundle reads and checks the whole index and the size of every shard; a tensor's bytes
are read, and checked against their checksum, only when asked for. Tensors placed on the same
bytes are read once, and the bytes one call reads are capped. Anything that does not fit raises
``ModelReadError`` with one line saying what.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from math import prod
from pathlib import Path

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.readers.codecs.crc32c import crc32c, crc32c_many, unmask
from bncheck.readers.tensorflow import sstable
from bncheck.readers.tensorflow.tf_protos import message_class
from bncheck.records import record

INDEX_SUFFIX = ".index"
#: Largest index bncheck reads: tens of bytes per variable.
MAX_INDEX_BYTES = 256 << 20
#: Largest string tensor bncheck reads: the object graph, a few bytes per object.
MAX_STRING_BYTES = 256 << 20
#: Most distinct stored bytes one ``read_arrays`` call reads: BatchNorm arrays are small.
MAX_READ_BYTES = 256 << 20
#: ``kTensorBundleVersion``: the bundle format version this reader implements.
BUNDLE_VERSION = 1
_LITTLE_ENDIAN, _BIG_ENDIAN = 0, 1
#: Keys of a partitioned variable's slices start with a zero byte (``EncodeTensorNameSlice``);
#: TensorFlow's checkpoint reader lists the full variable only.
_SLICE_KEY_PREFIX = b"\x00"
_MAX_RANK = 254
DT_STRING = 7

DT_BFLOAT16 = 14


@record
class DataType:
    """One of TensorFlow's ``DataType`` values."""

    name: str
    """TensorFlow's name for it."""
    numpy_code: str | None
    """The numpy type of its stored elements (bfloat16: read as uint16, then widened to
    float32); ``None`` for types bncheck does not read as numbers."""
    item_bytes: int | None
    """Bytes per element of a type stored as raw memory; ``None`` for the others."""


DTYPES = {
    1: DataType("float32", "f4", 4),
    2: DataType("float64", "f8", 8),
    3: DataType("int32", "i4", 4),
    4: DataType("uint8", "u1", 1),
    5: DataType("int16", "i2", 2),
    6: DataType("int8", "i1", 1),
    7: DataType("string", None, None),
    8: DataType("complex64", None, 8),
    9: DataType("int64", "i8", 8),
    10: DataType("bool", None, 1),
    11: DataType("qint8", None, 1),
    12: DataType("quint8", None, 1),
    13: DataType("qint32", None, 4),
    DT_BFLOAT16: DataType("bfloat16", "u2", 2),
    15: DataType("qint16", None, 2),
    16: DataType("quint16", None, 2),
    17: DataType("uint16", "u2", 2),
    18: DataType("complex128", None, 16),
    19: DataType("float16", "f2", 2),
    20: DataType("resource", None, None),
    21: DataType("variant", None, None),
    22: DataType("uint32", "u4", 4),
    23: DataType("uint64", "u8", 8),
}


@record
class BundleEntry:
    """Where and how one tensor is stored."""

    dtype: int
    """TensorFlow ``DataType`` number (``DTYPES``)."""
    shape: tuple[int, ...]
    shard: int
    """Number of the data shard holding the bytes."""
    offset: int
    size: int
    """Bytes in the data shard, from ``offset``."""
    masked_crc32c: int
    """The CRC-32C of those bytes, masked as stored."""
    slices: int
    """How many slices a partitioned variable was saved in; 0 for a whole tensor."""

    @property
    def type(self) -> DataType:
        return DTYPES.get(self.dtype, DataType(f"DataType {self.dtype}", None, None))


def data_shard_name(prefix_name: str, shard: int, shards: int) -> str:
    return f"{prefix_name}.data-{shard:05d}-of-{shards:05d}"


class TensorBundle:
    """An open bundle: every entry of its index, tensors read on demand."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._name = "" if prefix.endswith(("/", "\\")) else Path(prefix).name
        table = self._read_index()
        header = table.pop(b"", None)
        if header is None:
            raise self._corrupt("no header entry")
        self.shards, self.big_endian = self._parse_header(header)
        self.entries: dict[str, BundleEntry] = {}
        every_entry = []
        for raw_key, value in table.items():
            key = raw_key.decode("utf-8", "backslashreplace")
            entry = self._parse_entry(key, value)
            every_entry.append(entry)
            if not raw_key.startswith(_SLICE_KEY_PREFIX):
                self.entries[key] = entry
        self._shard_paths = self._check_shards(every_entry)

    def read_arrays(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric tensors in their stored type, except bfloat16, which numpy lacks: float32
        (exactly: bfloat16 is the upper half of a float32). Their checksums are verified
        together, which costs little more than one. Tensors placed on the same bytes are read
        once and share one read-only array."""
        entries = [self.entries[key] for key in keys]
        regions: dict[tuple[int, int, int], str] = {}
        for key, entry in zip(keys, entries, strict=True):
            self._refuse_slices(key, entry)
            if entry.type.numpy_code is None:
                raise ModelReadError(f"{key} has non-numeric type {entry.type.name}")
            regions.setdefault((entry.shard, entry.offset, entry.size), key)
        total = sum(size for _, _, size in regions)
        if total > MAX_READ_BYTES:
            raise ModelReadError(
                f"the checkpoint {self._name} places the {len(keys)} tensors to read on {total} "
                f"bytes, more than {MAX_READ_BYTES >> 20} MiB"
            )
        stored = {
            region: self._tensor_bytes(key, self.entries[key]) for region, key in regions.items()
        }
        crcs = dict(zip(stored, crc32c_many(list(stored.values())), strict=True))
        order = ">" if self.big_endian else "<"
        converted: dict[tuple[tuple[int, int, int], int], np.ndarray] = {}
        arrays = {}
        for key, entry in zip(keys, entries, strict=True):
            region = (entry.shard, entry.offset, entry.size)
            if crcs[region] != unmask(entry.masked_crc32c):
                raise self._data_error(key, "checksum mismatch")
            array = converted.get((region, entry.dtype))
            if array is None:
                array = np.frombuffer(stored[region], np.dtype(f"{order}{entry.type.numpy_code}"))
                if entry.dtype == DT_BFLOAT16:
                    array = (array.astype(np.uint32) << 16).view(np.float32)
                else:
                    array = array.astype(array.dtype.newbyteorder("="))
                array.flags.writeable = False
                converted[region, entry.dtype] = array
            arrays[key] = array.reshape(entry.shape)
        return arrays

    def read_strings(self, key: str, max_bytes: int = MAX_STRING_BYTES) -> list[bytes]:
        """A string tensor's elements, flattened.

        Stored as every element's length (varint64), a masked CRC-32C of those lengths (each
        taken as a uint32, or a uint64 when larger), then the elements' bytes back to back; the
        entry's checksum covers the lengths so taken, the stored length checksum and the bytes.
        """
        entry = self.entries[key]
        self._refuse_slices(key, entry)
        if entry.dtype != DT_STRING:
            raise ModelReadError(f"{key} has type {entry.type.name}, not string")
        count = prod(entry.shape)
        if entry.size == 0 and count == 0:
            return []
        if entry.size > max_bytes:
            raise self._data_error(key, f"{entry.size} bytes, more than {max_bytes >> 20} MiB")
        if count > entry.size:  # each length takes a byte
            raise self._data_error(key, f"{count} strings in {entry.size} bytes")
        data = self._tensor_bytes(key, entry)
        order = ">" if self.big_endian else "<"
        lengths, position, crc = [], 0, 0
        for _ in range(count):
            length, position = self._string_length(key, data, position)
            lengths.append(length)
            crc = crc32c(struct.pack(f"{order}{'I' if length <= 0xFFFFFFFF else 'Q'}", length), crc)
        stored = data[position : position + 4]
        if len(stored) < 4 or unmask(struct.unpack(f"{order}I", stored)[0]) != crc:
            raise self._data_error(key, "the string lengths' checksum does not match")
        position += 4
        if position + sum(lengths) != len(data):
            raise self._data_error(key, "the string lengths do not add up to the stored size")
        if crc32c(data[position - 4 :], crc) != unmask(entry.masked_crc32c):
            raise self._data_error(key, "checksum mismatch")
        strings = []
        for length in lengths:
            strings.append(data[position : position + length])
            position += length
        return strings

    def _read_index(self) -> dict[bytes, bytes]:
        index = f"{self.prefix}{INDEX_SUFFIX}"
        try:
            size = os.path.getsize(index)
            if size > MAX_INDEX_BYTES:
                raise self._corrupt(f"{size} bytes, more than {MAX_INDEX_BYTES >> 20} MiB")
            with open(index, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise ModelReadError(
                f"cannot read checkpoint index {self._name}{INDEX_SUFFIX} ({exc.strerror or exc})"
            ) from None
        try:
            return sstable.read_table(data)
        except sstable.TableError as exc:
            raise self._corrupt(str(exc)) from None

    def _parse_header(self, value: bytes) -> tuple[int, bool]:
        from google.protobuf.message import DecodeError

        header = message_class("BundleHeaderProto")()
        try:
            header.ParseFromString(value)
        except DecodeError:
            raise self._corrupt("unable to parse header") from None
        if header.num_shards < 1:
            raise self._corrupt(f"the header claims {header.num_shards} data shards")
        if header.endianness not in (_LITTLE_ENDIAN, _BIG_ENDIAN):
            raise self._corrupt(f"unknown byte order {header.endianness} in the header")
        version = header.version
        if version.producer < 0:
            raise self._corrupt(f"the header claims format version {version.producer}")
        if version.min_consumer > BUNDLE_VERSION:
            raise ModelReadError(
                f"checkpoint {self._name} needs a newer reader: format version "
                f"{version.producer}, readable from version {version.min_consumer}; "
                f"bncheck reads version {BUNDLE_VERSION}"
            )
        if BUNDLE_VERSION in version.bad_consumers:
            raise ModelReadError(
                f"checkpoint {self._name} disallows readers of format version {BUNDLE_VERSION}"
            )
        return header.num_shards, header.endianness == _BIG_ENDIAN

    def _parse_entry(self, key: str, value: bytes) -> BundleEntry:
        from google.protobuf.message import DecodeError

        proto = message_class("BundleEntryProto")()
        try:
            proto.ParseFromString(value)
        except DecodeError:
            raise self._corrupt(f"entry for key {key} not parseable") from None
        if len(proto.shape.dim) > _MAX_RANK:
            raise self._corrupt(f"a shape of {len(proto.shape.dim)} dimensions for {key}")
        dims = tuple(dim.size for dim in proto.shape.dim)
        if proto.shape.unknown_rank or any(d < 0 for d in dims) or prod(dims) >= 1 << 63:
            raise self._corrupt(f"invalid tensor shape {list(dims)} for {key}")
        entry = BundleEntry(
            dtype=proto.dtype,
            shape=dims,
            shard=proto.shard_id,
            offset=proto.offset,
            size=proto.size,
            masked_crc32c=proto.crc32c,
            slices=len(proto.slices),
        )
        if entry.slices:
            return entry  # only the slices' own entries locate bytes
        if not 0 <= entry.shard < self.shards or entry.offset < 0 or entry.size < 0:
            raise self._corrupt(
                f"{key} is placed at shard {entry.shard}, offset {entry.offset}, size "
                f"{entry.size}, outside a bundle of {self.shards} shards"
            )
        item_bytes = entry.type.item_bytes
        if item_bytes is not None and entry.size != prod(dims) * item_bytes:
            raise self._corrupt(
                f"{key} is stored in {entry.size} bytes; {entry.type.name} {list(dims)} "
                f"takes {prod(dims) * item_bytes}"
            )
        return entry

    def _check_shards(self, entries: list[BundleEntry]) -> list[str]:
        """Every data shard exists and is long enough for the entries placed in it."""
        needed: dict[int, int] = {}
        for entry in entries:
            if not entry.slices:
                end = entry.offset + entry.size
                needed[entry.shard] = max(needed.get(entry.shard, 0), end)
        paths = []
        for shard in range(self.shards):
            path = data_shard_name(self.prefix, shard, self.shards)
            name = data_shard_name(self._name, shard, self.shards)
            try:
                size = os.path.getsize(path)
            except OSError:
                raise ModelReadError(f"missing checkpoint data shard {name}") from None
            if size < needed.get(shard, 0):
                raise ModelReadError(
                    f"truncated checkpoint data shard {name}: {size} bytes, the index places "
                    f"tensors up to byte {needed[shard]}"
                )
            paths.append(path)
        return paths

    def _tensor_bytes(self, key: str, entry: BundleEntry) -> bytes:
        """A tensor's stored bytes, not yet checked against their checksum."""
        path = self._shard_paths[entry.shard]
        try:
            with open(path, "rb") as handle:
                handle.seek(entry.offset)
                data = handle.read(entry.size)
        except OSError as exc:
            raise self._data_error(key, exc.strerror or str(exc)) from None
        if len(data) != entry.size:
            raise self._data_error(key, "the data shard ends early")
        return data

    def _string_length(self, key: str, data: bytes, position: int) -> tuple[int, int]:
        try:
            return sstable.varint(data, position, 64)
        except sstable.TableError:
            raise self._data_error(key, "bad string length") from None

    def _refuse_slices(self, key: str, entry: BundleEntry) -> None:
        if entry.slices:
            raise ModelReadError(
                f"{key} is a partitioned variable saved in {entry.slices} slices, which bncheck "
                "does not read"
            )

    def _corrupt(self, reason: str) -> ModelReadError:
        return ModelReadError(f"corrupt checkpoint index {self._name}{INDEX_SUFFIX} ({reason})")

    def _data_error(self, key: str, reason: str) -> ModelReadError:
        return ModelReadError(
            f"cannot read {key} from the checkpoint data of {self._name} ({reason})"
        )
