"""The hand-written codecs against the reference libraries: Snappy against ``cramjam`` (which
wraps Google's compressor) and CRC-32C against ``google-crc32c``. The inputs are the bytes a
TensorFlow checkpoint holds: float arrays of real data, their repeats, and noise."""

from __future__ import annotations

import cramjam
import google_crc32c
import numpy as np
import pytest
from sklearn.datasets import load_digits

from bncheck.readers.codecs import crc32c, snappy


def _inputs() -> dict[str, bytes]:
    digits = load_digits().data.astype("<f4")
    noise = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    return {
        "empty": b"",
        "one byte": b"\x07",
        "digits": digits.tobytes(),  # 230 KB of floats: long literals and both copy widths
        "digits as float64": digits.astype("<f8").tobytes(),
        "repeated row": digits[:1].tobytes() * 3000,  # 768 KB: long copies of one row
        "zeros": bytes(100_000),
        "noise": noise,  # incompressible: literals with every length encoding
        "noise then repeats": noise[:5000] + noise[:5000] * 20 + b"\x00" * 70,
    }


INPUTS = _inputs()


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_snappy_inflates_what_the_reference_compressor_wrote(name: str) -> None:
    data = INPUTS[name]
    compressed = bytes(cramjam.snappy.compress_raw(data))
    assert snappy.uncompressed_length(compressed) == len(data)
    assert snappy.decompress(compressed) == data


def test_snappy_refuses_every_truncation_the_reference_refuses() -> None:
    compressed = bytes(cramjam.snappy.compress_raw(INPUTS["noise then repeats"][:3000] * 3))
    for end in range(1, len(compressed), 7):
        cut = compressed[:end]
        try:
            expected = bytes(cramjam.snappy.decompress_raw(cut))
        except cramjam.DecompressionError:
            expected = None
        try:
            ours = snappy.decompress(cut)
        except snappy.SnappyError:
            ours = None
        assert ours == expected, end


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_crc32c_matches_the_reference(name: str) -> None:
    data = INPUTS[name]
    assert crc32c.crc32c(data) == google_crc32c.value(data)
    half = len(data) // 2
    extended = google_crc32c.extend(google_crc32c.value(data[:half]), data[half:])
    assert crc32c.crc32c(data[half:], crc32c.crc32c(data[:half])) == extended


def test_crc32c_of_many_buffers_of_every_small_length_matches_the_reference() -> None:
    data = INPUTS["digits"]
    buffers = [data[start : start + length] for length in range(0, 600) for start in (0, 1001)]
    buffers += [data[: 1 << 16], data[3 : 3 + (1 << 16)]]
    assert crc32c.crc32c_many(buffers) == [google_crc32c.value(buffer) for buffer in buffers]
