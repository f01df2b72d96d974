"""Snappy decompression (the raw block format, https://github.com/google/snappy/blob/main/format_description.txt).

TensorFlow's table reader accepts Snappy-compressed blocks, and TensorFlow 1.1 wrote checkpoint
indexes that way; every release since writes them uncompressed.
"""

from __future__ import annotations

_LITERAL, _COPY_1, _COPY_2, _COPY_4 = range(4)
#: Largest block bncheck will inflate; a checkpoint index block is a few KiB.
MAX_UNCOMPRESSED = 64 << 20


class SnappyError(ValueError):
    """The compressed data is malformed."""


def uncompressed_length(data: bytes) -> int:
    """The length the data declares it inflates to, before any of it is inflated."""
    return _preamble(data)[0]


def decompress(data: bytes) -> bytes:
    expected, position = _preamble(data)
    if expected > MAX_UNCOMPRESSED:
        raise SnappyError(f"claims {expected} bytes uncompressed")
    out = bytearray()
    end = len(data)
    while position < end:
        tag = data[position]
        position += 1
        if tag & 3 == _LITERAL:
            length = (tag >> 2) + 1
            if length > 60:
                extra = length - 60
                if position + extra > end:
                    raise SnappyError("literal length runs past the end")
                length = int.from_bytes(data[position : position + extra], "little") + 1
                position += extra
            if position + length > end:
                raise SnappyError("literal runs past the end")
            out += data[position : position + length]
            position += length
        else:
            position = _copy(data, position, tag, out)
        if len(out) > expected:
            raise SnappyError("longer than its stated length")
    if len(out) != expected:
        raise SnappyError(f"{len(out)} bytes, not the stated {expected}")
    return bytes(out)


def _copy(data: bytes, position: int, tag: int, out: bytearray) -> int:
    """Append a back-reference's bytes to ``out``; the position after its operands."""
    kind = tag & 3
    width = {_COPY_1: 1, _COPY_2: 2, _COPY_4: 4}[kind]
    if position + width > len(data):
        raise SnappyError("copy runs past the end")
    if kind == _COPY_1:
        length = 4 + ((tag >> 2) & 7)
        offset = ((tag >> 5) << 8) | data[position]
    else:
        length = (tag >> 2) + 1
        offset = int.from_bytes(data[position : position + width], "little")
    if not 0 < offset <= len(out):
        raise SnappyError("copy from before the start")
    start = len(out) - offset
    if offset >= length:
        out += out[start : start + length]
    else:  # the copy overlaps what it writes: a repeating pattern
        out += (out[start:] * (length // offset + 1))[:length]
    return position + width


def _preamble(data: bytes) -> tuple[int, int]:
    """The uncompressed length (a varint of at most 32 bits) and where the elements start."""
    value = 0
    for position in range(min(len(data), 5)):
        byte = data[position]
        value |= (byte & 0x7F) << (7 * position)
        if not byte & 0x80:
            return value, position + 1
    raise SnappyError("bad length preamble")
