"""An HDF5 file: a shard of sharded Keras weights, a full legacy model, or weights only."""

from __future__ import annotations

from pathlib import Path

import h5py

from bncheck.model import ModelDescription
from bncheck.readers.keras import keras3_shards, legacy_h5, weights_h5


def read(path: str) -> ModelDescription:
    index = keras3_shards.index_of_shard(Path(path))
    if index is not None:
        return keras3_shards.read(str(index), shown_as=path)
    with h5py.File(path, "r") as h5:
        if legacy_h5.is_full_model(h5):
            return legacy_h5.read(path, h5)
        return weights_h5.read(path, h5)
