"""Write TensorFlow tensor bundles for the tests: the variants TensorFlow reads but today's
TensorFlow never writes (Snappy-compressed index blocks, big-endian data, several shards, many
small blocks), and well-checksummed files with wrong content.

Entries are TensorFlow's own ``BundleEntryProto`` and ``BundleHeaderProto``, tensors come from
TensorFlow's reader, and every bundle written here is read back by TensorFlow before bncheck's
reader is compared with it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.readers.codecs.crc32c import crc32c, mask
from bncheck.readers.tensorflow.sstable import TABLE_MAGIC

#: ``tensorflow.DataType`` numbers of the types written here.
DT_FLOAT, DT_DOUBLE, DT_INT32, DT_UINT8, DT_STRING, DT_INT64 = 1, 2, 3, 4, 7, 9
DT_BFLOAT16, DT_HALF = 14, 19
_NUMPY_TYPES = {DT_FLOAT: "f4", DT_DOUBLE: "f8", DT_INT32: "i4", DT_UINT8: "u1", DT_INT64: "i8"}
_NUMPY_TYPES[DT_HALF] = "f2"


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def snappy_compress(data: bytes) -> bytes:
    """Greedy Snappy: 4-byte matches found by a hash of the last position seen, emitted as
    2-byte-offset copies (overlapping ones included) between literals."""
    out = bytearray(varint(len(data)))
    last_seen: dict[bytes, int] = {}
    position = literal_start = 0

    def literal(end: int) -> None:
        chunk = data[literal_start:end]
        while chunk:
            piece, chunk = chunk[:65536], chunk[65536:]
            if len(piece) <= 60:
                out.append((len(piece) - 1) << 2)
            else:
                out.append(61 << 2)  # two length bytes follow
                out.extend((len(piece) - 1).to_bytes(2, "little"))
            out.extend(piece)

    while position + 4 <= len(data):
        window = data[position : position + 4]
        candidate = last_seen.get(window)
        last_seen[window] = position
        if candidate is None or position - candidate > 0xFFFF:
            position += 1
            continue
        length = 4
        while position + length < len(data) and data[candidate + length] == data[position + length]:
            length += 1
        literal(position)
        offset = position - candidate
        remaining = length
        while remaining:
            piece = min(remaining, 64)
            out.append(((piece - 1) << 2) | 2)
            out.extend(offset.to_bytes(2, "little"))
            remaining -= piece
        position += length
        literal_start = position
    literal(len(data))
    return bytes(out)


def write_table(
    entries: Iterable[tuple[bytes, bytes]],
    block_bytes: int = 4096,
    restart_interval: int = 16,
    compress: bool = False,
) -> bytes:
    """A LevelDB-format table of sorted entries, as TensorFlow's ``TableBuilder`` lays it out."""
    out = bytearray()

    def write_block(contents: bytes) -> bytes:
        kind = 0
        if compress:
            contents, kind = snappy_compress(contents), 1
        handle = varint(len(out)) + varint(len(contents))
        trailer = bytes([kind])
        out.extend(contents + trailer + struct.pack("<I", mask(crc32c(contents + trailer))))
        return handle

    def block(items: list[tuple[bytes, bytes]]) -> bytes:
        body, restarts, previous = bytearray(), [], b""
        for number, (key, value) in enumerate(items):
            shared = 0
            if number % restart_interval:
                while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                    shared += 1
            else:
                restarts.append(len(body))
            body += varint(shared) + varint(len(key) - shared) + varint(len(value))
            body += key[shared:] + value
            previous = key
        restarts = restarts or [0]
        return bytes(body) + struct.pack(f"<{len(restarts) + 1}I", *restarts, len(restarts))

    index: list[tuple[bytes, bytes]] = []
    pending: list[tuple[bytes, bytes]] = []
    size = 0
    for key, value in entries:
        pending.append((key, value))
        size += len(key) + len(value) + 3
        if size >= block_bytes:
            index.append((pending[-1][0], write_block(block(pending))))
            pending, size = [], 0
    if pending:
        index.append((pending[-1][0], write_block(block(pending))))
    metaindex = write_block(block([]))
    index_handle = write_block(block(index))
    footer = (metaindex + index_handle).ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    return bytes(out + footer)


@dataclass
class Tensor:
    """One tensor to write: a numeric array (bfloat16 given as its float32 values) or the
    elements of a string tensor."""

    dtype: int
    shape: tuple[int, ...]
    values: np.ndarray | list[bytes]


def tensor_bytes(tensor: Tensor, big_endian: bool) -> tuple[bytes, int]:
    """The stored bytes and their CRC-32C (``WriteTensor``, ``WriteStringTensor``)."""
    order = ">" if big_endian else "<"
    if tensor.dtype == DT_STRING:
        assert isinstance(tensor.values, list)
        lengths = b"".join(varint(len(s)) for s in tensor.values)
        crc = 0
        for element in tensor.values:
            crc = crc32c(struct.pack(f"{order}I", len(element)), crc)
        length_checksum = struct.pack(f"{order}I", mask(crc))
        strings = b"".join(tensor.values)
        return lengths + length_checksum + strings, crc32c(length_checksum + strings, crc)
    values = np.asarray(tensor.values)
    if tensor.dtype == DT_BFLOAT16:
        data = (values.astype("<f4").view("<u4") >> 16).astype(f"{order}u2").tobytes()
    else:
        data = values.astype(f"{order}{_NUMPY_TYPES[tensor.dtype]}").tobytes()
    return data, crc32c(data)


def write_bundle(
    prefix: Path,
    tensors: Mapping[str, Tensor],
    *,
    shards: int = 1,
    big_endian: bool = False,
    block_bytes: int = 4096,
    compress: bool = False,
    edit_entry: Callable[[str, Any], None] = lambda key, entry: None,
) -> None:
    """Write ``prefix.index`` and its data shards; tensors go to the shards in turn.
    ``edit_entry(key, entry)`` may change an entry before it is written."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    prefix.parent.mkdir(parents=True, exist_ok=True)
    data = [bytearray() for _ in range(shards)]
    entries = []
    for number, (key, tensor) in enumerate(sorted(tensors.items())):
        shard = number % shards
        stored, crc = tensor_bytes(tensor, big_endian)
        entry = tensor_bundle_pb2.BundleEntryProto(
            dtype=tensor.dtype, shard_id=shard, offset=len(data[shard]), size=len(stored)
        )
        entry.crc32c = mask(crc)
        for size in tensor.shape:
            entry.shape.dim.add(size=size)
        edit_entry(key, entry)
        data[shard] += stored
        entries.append((key.encode(), entry.SerializeToString()))
    header = tensor_bundle_pb2.BundleHeaderProto(num_shards=shards)
    header.endianness = header.BIG if big_endian else header.LITTLE
    header.version.producer = 1
    table = write_table(
        [(b"", header.SerializeToString()), *entries], block_bytes=block_bytes, compress=compress
    )
    Path(f"{prefix}.index").write_bytes(table)
    for shard, contents in enumerate(data):
        Path(f"{prefix}.data-{shard:05d}-of-{shards:05d}").write_bytes(bytes(contents))


def tensors_of(prefix: str) -> dict[str, Tensor]:
    """Every tensor of a bundle, as TensorFlow reads it."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    tensors = {}
    for key, dtype in reader.get_variable_to_dtype_map().items():
        value = reader.get_tensor(key)
        if dtype == tf.string:
            elements = [value] if isinstance(value, bytes) else list(np.ravel(value))
            tensors[key] = Tensor(DT_STRING, np.shape(value), elements)
        else:
            tensors[key] = Tensor(dtype.as_datatype_enum, np.shape(value), np.asarray(value))
    return tensors
