"""CRC-32C (Castagnoli), as TensorFlow checksums its table blocks and tensor data, and the mask
LevelDB puts on stored checksums.

Python has no CRC-32C of its own, and byte by byte pure Python manages a few MB/s. So the register
advances two bytes at a time (a 65536-entry table), and longer inputs are cut into equal lanes
that numpy advances side by side, one column of 16-bit words at a time; the lanes' registers are
then joined. A CRC register is linear over GF(2): the register after ``A + B`` is the register
after ``A`` carried over ``len(B)`` zero bytes, XOR the register of ``B`` alone started from zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

_POLYNOMIAL = 0x82F63B78  # reflected
_MASK_DELTA = 0xA282EAD8
#: Below this many bytes the lanes cost more than they save.
_MIN_LANE_INPUT = 1024
_MIN_LANE_BYTES = 16
#: Buffers at least this long gain nothing from advancing together, and joining them for it
#: would copy them: each is checksummed alone.
_ALONE_BYTES = 1 << 20


def _byte_table() -> list[int]:
    table = []
    for byte in range(256):
        register = byte
        for _ in range(8):
            register = (register >> 1) ^ _POLYNOMIAL if register & 1 else register >> 1
        table.append(register)
    return table


def _word_table(byte_table: np.ndarray) -> np.ndarray:
    """The register step over two bytes, indexed by (register ^ little-endian word) & 0xFFFF."""
    words = np.arange(1 << 16, dtype=np.uint32)
    first = byte_table[words & 0xFF]
    return byte_table[(first ^ (words >> 8)) & 0xFF] ^ (first >> 8)


_TABLE = _byte_table()
_TABLE_ARRAY = np.array(_TABLE, dtype=np.uint32)
_WORD_TABLE_ARRAY = _word_table(_TABLE_ARRAY)
_WORD_TABLE = _WORD_TABLE_ARRAY.tolist()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC-32C of ``data``; with ``crc``, of the bytes that gave ``crc`` followed by ``data``
    (``crc32c::Extend``)."""
    register = crc ^ 0xFFFFFFFF
    done = 0
    if len(data) >= _MIN_LANE_INPUT:
        # One numpy step per word of a lane, one Python step per lane to join them: lanes of
        # about the square root of the length keep both small.
        lane_bytes = 1 << max(4, (len(data).bit_length() - 1) // 2 - 1)
        lanes = len(data) // lane_bytes
        register = _advance_lanes(register, data, lanes, lane_bytes)
        done = lanes * lane_bytes
    rest = memoryview(data)[done:]
    even = len(rest) & ~1
    return _advance_bytes(_advance_words(register, rest[:even]), rest[even:]) ^ 0xFFFFFFFF


def crc32c_many(buffers: Sequence[bytes]) -> list[int]:
    """The CRC-32C of each buffer. Buffers of one length advance together, every lane of every
    buffer in the same numpy step, so that many small tensors cost little more than one."""
    results = [0] * len(buffers)
    by_length: dict[int, list[int]] = {}
    for position, buffer in enumerate(buffers):
        by_length.setdefault(len(buffer), []).append(position)
    for length, positions in by_length.items():
        if length >= _ALONE_BYTES:
            for position in positions:
                results[position] = crc32c(buffers[position])
            continue
        same = [buffers[position] for position in positions]
        for position, crc in zip(positions, _same_length(same, length), strict=True):
            results[position] = crc
    return results


def _same_length(buffers: list[bytes], length: int) -> list[int]:
    if length < 2 * _MIN_LANE_BYTES:
        return [crc32c(buffer) for buffer in buffers]
    # Word steps over a lane against joining steps (a few numpy calls each) per lane.
    lane_bytes = 1 << ((12 * length).bit_length() - 1) // 2
    lane_bytes = max(_MIN_LANE_BYTES, min(lane_bytes, length // 2))
    lanes = length // lane_bytes
    data = np.frombuffer(b"".join(buffers), np.uint8).reshape(len(buffers), length)
    head = np.ascontiguousarray(data[:, : lanes * lane_bytes]).view("<u2")
    registers = np.zeros(len(buffers) * lanes, np.uint32)
    registers[::lanes] = 0xFFFFFFFF
    table = _WORD_TABLE_ARRAY
    for column in head.reshape(len(buffers) * lanes, lane_bytes // 2).T.astype(np.uint32):
        registers = table[(registers ^ column) & 0xFFFF] ^ (registers >> 16)
    by_buffer = registers.reshape(len(buffers), lanes)
    shift = _lane_shift_arrays(lane_bytes)
    joined = np.zeros(len(buffers), np.uint32)
    for lane in range(lanes):
        joined = (
            shift[0][joined & 0xFF]
            ^ shift[1][(joined >> 8) & 0xFF]
            ^ shift[2][(joined >> 16) & 0xFF]
            ^ shift[3][joined >> 24]
            ^ by_buffer[:, lane]
        )
    tail = np.ascontiguousarray(data[:, lanes * lane_bytes :])
    even = tail.shape[1] & ~1
    for column in tail[:, :even].view("<u2").T.astype(np.uint32):
        joined = table[(joined ^ column) & 0xFFFF] ^ (joined >> 16)
    if tail.shape[1] & 1:
        joined = _TABLE_ARRAY[(joined ^ tail[:, -1]) & 0xFF] ^ (joined >> 8)
    return (joined ^ 0xFFFFFFFF).tolist()


def mask(crc: int) -> int:
    """The checksum as stored: rotated and offset, so that a CRC of data holding CRCs stays
    strong."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rotated = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def _advance_bytes(register: int, data: memoryview | bytes) -> int:
    table = _TABLE
    for byte in data:
        register = table[(register ^ byte) & 0xFF] ^ (register >> 8)
    return register


def _advance_words(register: int, data: memoryview) -> int:
    """``data`` of an even length, as little-endian 16-bit words."""
    table = _WORD_TABLE
    for word in np.frombuffer(data, "<u2").tolist():
        register = table[(register ^ word) & 0xFFFF] ^ (register >> 16)
    return register


def _advance_lanes(register: int, data: bytes, lanes: int, lane_bytes: int) -> int:
    """The register after the first ``lanes`` x ``lane_bytes`` bytes of ``data``."""
    words = np.frombuffer(data, "<u2", lanes * lane_bytes // 2).reshape(lanes, lane_bytes // 2)
    registers = np.zeros(lanes, np.uint32)
    registers[0] = register
    table = _WORD_TABLE_ARRAY
    for column in words.T.astype(np.uint32):
        registers = table[(registers ^ column) & 0xFFFF] ^ (registers >> 16)
    shift = _lane_shift_tables(lane_bytes)
    joined = 0
    for lane_register in registers.tolist():
        joined = (
            shift[0][joined & 0xFF]
            ^ shift[1][(joined >> 8) & 0xFF]
            ^ shift[2][(joined >> 16) & 0xFF]
            ^ shift[3][joined >> 24]
            ^ lane_register
        )
    return joined


@cache
def _lane_shift_arrays(lane_bytes: int) -> np.ndarray:
    return np.array(_lane_shift_tables(lane_bytes), dtype=np.uint32)


@cache
def _lane_shift_tables(lane_bytes: int) -> tuple[list[int], ...]:
    """The linear map "carry a register over one lane of zero bytes", as four byte tables."""
    zeros = bytes(lane_bytes)
    images = [_advance_bytes(1 << bit, zeros) for bit in range(32)]
    tables = []
    for position in range(4):
        table = []
        for byte in range(256):
            image = 0
            for bit in range(8):
                if byte >> bit & 1:
                    image ^= images[8 * position + bit]
            table.append(image)
        tables.append(table)
    return tuple(tables)
