"""Readers record where each BN array lives, and that place holds exactly the array read."""

from __future__ import annotations

import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, fixture_manifest

#: Arrays have HDF5 locations in the HDF5-based formats (.keras archives hold one) and nowhere
#: else: checkpoints and SavedModels are directories, sharded weights spread one layer over
#: several files (their source names the shards), and PyTorch, safetensors and ONNX files are
#: read by their own readers, whose tests check what they read against their frameworks.
HDF5_FIXTURES = sorted(
    name for name in fixture_manifest() if name.endswith((".keras", ".h5", ".hdf5"))
)


@pytest.mark.parametrize("fixture", HDF5_FIXTURES)
def test_every_array_is_where_the_reader_says(fixture: str, tmp_path: Path) -> None:
    path = FIXTURES / fixture
    description = read_model(str(path))
    if description.format == "keras":
        weights = tmp_path / "model.weights.h5"
        weights.write_bytes(zipfile.ZipFile(path).read("model.weights.h5"))
        path = weights
    with h5py.File(path, "r") as h5:
        for layer in description.layers:
            assert set(layer.locations) == set(layer.arrays()), layer.path
            for role, location in layer.locations.items():
                stored = np.asarray(h5[location][()])
                read = layer.array(role)
                assert read is not None and np.array_equal(stored, read, equal_nan=True), location
