"""FarmHash's Fingerprint64, against TensorFlow's (``tf.fingerprint``, which hashes each row's
bytes with it), for every length that takes another path through the algorithm."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck.readers.codecs.farmhash import fingerprint64

tf = pytest.importorskip("tensorflow", reason="TensorFlow's Fingerprint64 is the reference")

LENGTHS = [*range(0, 70), 127, 128, 129, 191, 192, 193, 1000, 4096, 65_537]


@pytest.mark.parametrize("length", LENGTHS)
def test_fingerprint64_is_tensorflows(length: int) -> None:
    data = np.random.default_rng(length).integers(0, 256, size=(1, length), dtype=np.uint8)
    theirs = tf.fingerprint(tf.constant(data), method="farmhash64").numpy()[0].tobytes()
    assert fingerprint64(data.tobytes()) == int.from_bytes(theirs, "little")
