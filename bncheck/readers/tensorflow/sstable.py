"""The sorted string table of a TensorFlow checkpoint index (``tensorflow/core/lib/io/table.cc``,
``block.cc``, ``format.cc``: LevelDB's table format without its filters).

A table is data blocks of sorted key/value entries, an index block whose entries point at the data
blocks, and a 48-byte footer that points at the index. Every block carries a type byte and a
masked CRC-32C of its contents. Every length, offset and checksum is checked against the file:
whatever does not fit raises ``TableError`` with the reason.

Keys are prefix-compressed, so a small file can describe keys far longer than itself: key length,
the number of entries, the keys' total length and the bytes inflated from Snappy blocks are all
capped, and each key is rebuilt in time proportional to its own length.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from bncheck.readers.codecs import snappy
from bncheck.readers.codecs.crc32c import crc32c, unmask

FOOTER_BYTES = 48
#: The footer's last 8 bytes (``kTableMagicNumber``, little-endian).
TABLE_MAGIC = 0xDB4775248B80FB57
#: Each block ends in a type byte and a masked CRC-32C of the contents and the type byte.
_TRAILER_BYTES = 5
_UNCOMPRESSED, _SNAPPY = 0, 1
#: Longest key read: a checkpoint key is a variable's name or object path, a few hundred bytes.
MAX_KEY_BYTES = 16 << 10
#: Most entries read: a checkpoint has one per variable (and per slice of a partitioned one).
MAX_ENTRIES = 1 << 18
#: Most bytes of keys, all entries together, and of one entry's value (a ``BundleEntryProto``:
#: tens of bytes, more for a partitioned variable's slices).
MAX_TOTAL_KEY_BYTES = 32 << 20
MAX_VALUE_BYTES = 1 << 20
#: Most bytes inflated from Snappy blocks, all blocks together: only TensorFlow 1.1 compressed
#: its indexes, of models far smaller; pure-Python inflation costs about a microsecond a byte.
MAX_INFLATED_BYTES = 8 << 20


class TableError(ValueError):
    """The file is not a well-formed table; ``str()`` says why."""


def read_table(data: bytes) -> dict[bytes, bytes]:
    """Every entry of the table, in key order."""
    if len(data) < FOOTER_BYTES:
        raise TableError("file is too short to be an sstable")
    footer = data[-FOOTER_BYTES:]
    if int.from_bytes(footer[-8:], "little") != TABLE_MAGIC:
        raise TableError("not an sstable (bad magic number)")
    handles = footer[:-8]
    _, position = _block_handle(handles, 0)  # the metaindex, unused by TensorFlow
    index_handle, _ = _block_handle(handles, position)
    body = memoryview(data)[: len(data) - FOOTER_BYTES]
    budget = _Budget()
    entries: dict[bytes, bytes] = {}
    last_key: bytes | None = None
    previous_separator: bytes | None = None
    index_block = _block(body, index_handle, "index block", budget)
    for separator, handle in _block_entries(index_block, budget):
        # Each index entry's key lies between its block's last key and the next block's first.
        if previous_separator is not None and separator <= previous_separator:
            raise TableError("index block keys out of order")
        block_handle, _ = _block_handle(handle, 0)
        block = _block(body, block_handle, "data block", budget)
        for key, value in _block_entries(block, budget):
            if last_key is not None and key <= last_key:
                raise TableError("keys out of order")
            if previous_separator is not None and key <= previous_separator:
                raise TableError("a data block's keys overlap the previous block's")
            entries[key] = value
            last_key = key
        if last_key is not None and last_key > separator:
            raise TableError("a data block holds keys past its index entry")
        previous_separator = separator
    return entries


class _Budget:
    """What a table has cost so far, against the caps above."""

    def __init__(self) -> None:
        self.entries = self.key_bytes = self.inflated = 0

    def entry(self, key_bytes: int, value_bytes: int) -> None:
        self.entries += 1
        self.key_bytes += key_bytes
        if key_bytes > MAX_KEY_BYTES:
            raise TableError(f"a key of {key_bytes} bytes, more than {MAX_KEY_BYTES}")
        if value_bytes > MAX_VALUE_BYTES:
            raise TableError(f"a value of {value_bytes} bytes, more than {MAX_VALUE_BYTES}")
        if self.entries > MAX_ENTRIES:
            raise TableError(f"more than {MAX_ENTRIES} entries")
        if self.key_bytes > MAX_TOTAL_KEY_BYTES:
            raise TableError(f"keys of more than {MAX_TOTAL_KEY_BYTES >> 20} MiB in all")

    def inflate(self, declared: int) -> None:
        self.inflated += declared
        if self.inflated > MAX_INFLATED_BYTES:
            raise TableError(
                f"compressed blocks inflating to more than {MAX_INFLATED_BYTES >> 20} MiB"
            )


def _block_handle(data: bytes | memoryview, position: int) -> tuple[tuple[int, int], int]:
    """``(offset, size)`` of a block handle at ``position``, and the position after it."""
    try:
        offset, position = varint(data, position, 64)
        size, position = varint(data, position, 64)
    except TableError:
        raise TableError("bad block handle") from None
    return (offset, size), position


def _block(body: memoryview, handle: tuple[int, int], what: str, budget: _Budget) -> bytes:
    """A block's contents, after checking its bounds, checksum and type."""
    offset, size = handle
    if offset + size + _TRAILER_BYTES > len(body):
        raise TableError(f"truncated block read ({what} past the end of the file)")
    contents = body[offset : offset + size + 1]
    (stored,) = struct.unpack_from("<I", body, offset + size + 1)
    if crc32c(bytes(contents)) != unmask(stored):
        raise TableError(f"block checksum mismatch ({what})")
    kind = contents[size]
    if kind == _UNCOMPRESSED:
        return bytes(contents[:size])
    if kind == _SNAPPY:
        compressed = bytes(contents[:size])
        try:
            budget.inflate(snappy.uncompressed_length(compressed))
            return snappy.decompress(compressed)
        except snappy.SnappyError as exc:
            raise TableError(f"corrupted compressed block contents ({exc})") from None
    raise TableError(f"bad block type {kind}")


def _block_entries(block: bytes, budget: _Budget) -> Iterator[tuple[bytes, bytes]]:
    """The entries of one block: keys are stored as the bytes they share with the previous key
    and the rest, and a restart point (an entry sharing nothing) is recorded every few entries."""
    if len(block) < 4:
        raise TableError("bad block contents")
    (restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    if not 0 < restarts <= (len(block) - 4) // 4:
        raise TableError("bad block contents (restart count)")
    limit = len(block) - 4 * (restarts + 1)
    position = 0
    key = bytearray()
    starts_without_sharing = []
    while position < limit:
        start = position
        shared, position = varint(block, position, 32)
        unshared, position = varint(block, position, 32)
        value_length, position = varint(block, position, 32)
        if shared > len(key) or position + unshared + value_length > limit:
            raise TableError("bad entry in block")
        budget.entry(shared + unshared, value_length)
        if shared == 0:
            starts_without_sharing.append(start)
        # In place: the shared prefix stays, so a key costs its own length, not its history's.
        del key[shared:]
        key += block[position : position + unshared]
        position += unshared
        yield bytes(key), block[position : position + value_length]
        position += value_length
    # Every restart point starts an entry that shares nothing; there are never more of them.
    if restarts > len(starts_without_sharing) or not set(
        struct.unpack_from(f"<{restarts}I", block, limit)
    ) <= set(starts_without_sharing):
        raise TableError("bad entry in block (restart point)")


def varint(data: bytes | memoryview, position: int, bits: int) -> tuple[int, int]:
    """A little-endian base-128 number of at most ``bits`` bits, and the position after it."""
    value = shift = 0
    while shift < bits:
        if position >= len(data):
            raise TableError("bad entry in block")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >> bits:
                break
            return value, position
        shift += 7
    raise TableError("bad entry in block (varint)")
