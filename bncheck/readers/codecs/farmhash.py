"""FarmHash's ``Fingerprint64`` (``farmhashna::Hash64``), which TensorFlow's ``Fingerprint64``
is: a SavedModel's ``fingerprint.pb`` holds it of the checkpoint's index file, and recalibrate,
which changes that file, writes the new one. Written from FarmHash's published algorithm
(Geoff Pike, 2014); ``tests/test_farmhash.py`` checks it against TensorFlow.
"""

from __future__ import annotations

import struct

_MASK = (1 << 64) - 1
# Primes between 2^63 and 2^64, FarmHash's.
_K0 = 0xC3A5C85C97CB3127
_K1 = 0xB492B66FBE98F273
_K2 = 0x9AE16A3B2F90404F


def _fetch(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", data, at)[0])


def _fetch32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _rotate(value: int, shift: int) -> int:
    return ((value >> shift) | (value << (64 - shift))) & _MASK


def _shift_mix(value: int) -> int:
    return value ^ (value >> 47)


def _hash16(u: int, v: int, mul: int) -> int:
    a = ((u ^ v) * mul) & _MASK
    a ^= a >> 47
    b = ((v ^ a) * mul) & _MASK
    b ^= b >> 47
    return (b * mul) & _MASK


def _up_to_16(data: bytes) -> int:
    n = len(data)
    if n >= 8:
        mul = _K2 + n * 2
        a = (_fetch(data, 0) + _K2) & _MASK
        b = _fetch(data, n - 8)
        c = (_rotate(b, 37) * mul + a) & _MASK
        d = ((_rotate(a, 25) + b) * mul) & _MASK
        return _hash16(c, d, mul)
    if n >= 4:
        mul = _K2 + n * 2
        return _hash16((n + (_fetch32(data, 0) << 3)) & _MASK, _fetch32(data, n - 4), mul)
    if n > 0:
        y = data[0] + (data[n >> 1] << 8)
        z = n + (data[n - 1] << 2)
        return (_shift_mix(((y * _K2) ^ (z * _K0)) & _MASK) * _K2) & _MASK
    return _K2


def _up_to_32(data: bytes) -> int:
    n = len(data)
    mul = _K2 + n * 2
    a = (_fetch(data, 0) * _K1) & _MASK
    b = _fetch(data, 8)
    c = (_fetch(data, n - 8) * mul) & _MASK
    d = (_fetch(data, n - 16) * _K2) & _MASK
    return _hash16(
        (_rotate((a + b) & _MASK, 43) + _rotate(c, 30) + d) & _MASK,
        (a + _rotate((b + _K2) & _MASK, 18) + c) & _MASK,
        mul,
    )


def _up_to_64(data: bytes) -> int:
    n = len(data)
    mul = _K2 + n * 2
    a = (_fetch(data, 0) * _K2) & _MASK
    b = _fetch(data, 8)
    c = (_fetch(data, n - 8) * mul) & _MASK
    d = (_fetch(data, n - 16) * _K2) & _MASK
    y = (_rotate((a + b) & _MASK, 43) + _rotate(c, 30) + d) & _MASK
    z = _hash16(y, (a + _rotate((b + _K2) & _MASK, 18) + c) & _MASK, mul)
    e = (_fetch(data, 16) * mul) & _MASK
    f = _fetch(data, 24)
    g = ((y + _fetch(data, n - 32)) * mul) & _MASK
    h = ((z + _fetch(data, n - 24)) * mul) & _MASK
    return _hash16(
        (_rotate((e + f) & _MASK, 43) + _rotate(g, 30) + h) & _MASK,
        (e + _rotate((f + a) & _MASK, 18) + g) & _MASK,
        mul,
    )


def _weak32(data: bytes, at: int, a: int, b: int) -> tuple[int, int]:
    """A 16-byte hash of ``data[at:at + 32]``, ``a`` and ``b``."""
    w, x, y, z = (_fetch(data, at + offset) for offset in (0, 8, 16, 24))
    a = (a + w) & _MASK
    b = _rotate((b + a + z) & _MASK, 21)
    c = a
    a = (a + x + y) & _MASK
    b = (b + _rotate(a, 44)) & _MASK
    return (a + z) & _MASK, (b + c) & _MASK


def fingerprint64(data: bytes) -> int:
    """FarmHash's ``Fingerprint64`` of ``data``."""
    n = len(data)
    if n <= 16:
        return _up_to_16(data)
    if n <= 32:
        return _up_to_32(data)
    if n <= 64:
        return _up_to_64(data)
    seed = 81
    x = seed
    y = (seed * _K1 + 113) & _MASK
    z = (_shift_mix((y * _K2 + 113) & _MASK) * _K2) & _MASK
    v = w = (0, 0)
    x = (x * _K2 + _fetch(data, 0)) & _MASK
    end = ((n - 1) // 64) * 64
    last64 = end + ((n - 1) & 63) - 63
    at = 0
    while True:
        x = (_rotate((x + y + v[0] + _fetch(data, at + 8)) & _MASK, 37) * _K1) & _MASK
        y = (_rotate((y + v[1] + _fetch(data, at + 48)) & _MASK, 42) * _K1) & _MASK
        x ^= w[1]
        y = (y + v[0] + _fetch(data, at + 40)) & _MASK
        z = (_rotate((z + w[0]) & _MASK, 33) * _K1) & _MASK
        v = _weak32(data, at, (v[1] * _K1) & _MASK, (x + w[0]) & _MASK)
        w = _weak32(data, at + 32, (z + w[1]) & _MASK, (y + _fetch(data, at + 16)) & _MASK)
        z, x = x, z
        at += 64
        if at == end:
            break
    mul = (_K1 + ((z & 0xFF) << 1)) & _MASK
    at = last64
    w = ((w[0] + ((n - 1) & 63)) & _MASK, w[1])
    v = ((v[0] + w[0]) & _MASK, v[1])
    w = ((w[0] + v[0]) & _MASK, w[1])
    x = (_rotate((x + y + v[0] + _fetch(data, at + 8)) & _MASK, 37) * mul) & _MASK
    y = (_rotate((y + v[1] + _fetch(data, at + 48)) & _MASK, 42) * mul) & _MASK
    x ^= (w[1] * 9) & _MASK
    y = (y + v[0] * 9 + _fetch(data, at + 40)) & _MASK
    z = (_rotate((z + w[0]) & _MASK, 33) * mul) & _MASK
    v = _weak32(data, at, (v[1] * mul) & _MASK, (x + w[0]) & _MASK)
    w = _weak32(data, at + 32, (z + w[1]) & _MASK, (y + _fetch(data, at + 16)) & _MASK)
    z, x = x, z
    return _hash16(
        (_hash16(v[0], w[0], mul) + _shift_mix(y) * _K0 + z) & _MASK,
        (_hash16(v[1], w[1], mul) + x) & _MASK,
        mul,
    )
