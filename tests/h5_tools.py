"""Reading HDF5 files back in tests, to compare what a command wrote with what it read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py


def datasets(path: Path) -> dict[str, bytes]:
    """Every dataset of an HDF5 file (or of a .keras archive's weights), as raw bytes."""
    if zipfile.is_zipfile(path):
        inner = path.with_suffix(".weights.h5")
        inner.write_bytes(zipfile.ZipFile(path).read("model.weights.h5"))
        path = inner
    found: dict[str, bytes] = {}
    with h5py.File(path, "r") as h5:
        h5.visititems(
            lambda name, node: (
                found.__setitem__(name, node[()].tobytes())
                if isinstance(node, h5py.Dataset)
                else None
            )
        )
    return found
