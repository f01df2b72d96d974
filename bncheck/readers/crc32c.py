"""CRC-32C (Castagnoli), as TensorFlow checksums its table blocks and tensor data, and the mask
LevelDB puts on stored checksums.

Python has no CRC-32C of its own. Byte by byte, pure Python manages a few MB/s, which a large
object graph would feel; so long inputs are cut into equal lanes that numpy advances side by side,
one byte column at a time, and the lanes' registers are then joined. A CRC register is linear over
GF(2): the register after ``A + B`` is the register after ``A`` carried over ``len(B)`` zero bytes,
XOR the register of ``B`` alone started from zero.
"""

from __future__ import annotations

from functools import cache

import numpy as np

_POLYNOMIAL = 0x82F63B78  # reflected
_MASK_DELTA = 0xA282EAD8
_LANE_BYTES = 256
#: Below this many bytes the lanes cost more than they save.
_MIN_LANES = 8


def _byte_table() -> list[int]:
    table = []
    for byte in range(256):
        register = byte
        for _ in range(8):
            register = (register >> 1) ^ _POLYNOMIAL if register & 1 else register >> 1
        table.append(register)
    return table


_TABLE = _byte_table()
_TABLE_ARRAY = np.array(_TABLE, dtype=np.uint32)


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC-32C of ``data``; with ``crc``, of the bytes that gave ``crc`` followed by ``data``
    (``crc32c::Extend``)."""
    register = crc ^ 0xFFFFFFFF
    lanes = len(data) // _LANE_BYTES
    done = 0
    if lanes >= _MIN_LANES:
        register = _advance_lanes(register, data, lanes)
        done = lanes * _LANE_BYTES
    return _advance_bytes(register, memoryview(data)[done:]) ^ 0xFFFFFFFF


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


def _advance_lanes(register: int, data: bytes, lanes: int) -> int:
    """The register after the first ``lanes`` x ``_LANE_BYTES`` bytes of ``data``."""
    columns = np.frombuffer(data, np.uint8, lanes * _LANE_BYTES).reshape(lanes, _LANE_BYTES)
    columns = np.ascontiguousarray(columns.T, dtype=np.uint32)
    registers = np.zeros(lanes, np.uint32)
    registers[0] = register
    for column in columns:
        registers = _TABLE_ARRAY[(registers ^ column) & 0xFF] ^ (registers >> 8)
    shift = _lane_shift_tables()
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
def _lane_shift_tables() -> tuple[list[int], ...]:
    """The linear map "carry a register over one lane of zero bytes", as four byte tables."""
    zeros = bytes(_LANE_BYTES)
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
