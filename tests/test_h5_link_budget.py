"""The low-level HDF5 lookups stop listing a group once the file's link budget is spent, and
refuse the file in one line, before holding every name of a group of millions."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.readers import read_model
from bncheck.readers.codecs import h5util


def _weights_file(path: Path, layers: int, variables: int) -> Path:
    """A Keras 3 weights file: ``layers`` BatchNorm groups, the first with ``variables``
    datasets in its ``vars`` group."""
    with h5py.File(path, "w") as h5:
        for index in range(layers):
            name = "batch_normalization" + (f"_{index}" if index else "")
            group = h5.create_group(f"layers/{name}/vars")
            for variable in range(variables if index == 0 else 4):
                group[str(variable)] = np.ones(4, "float32")
    return path


def test_a_file_within_the_link_budget_reads(tmp_path: Path) -> None:
    description = read_model(str(_weights_file(tmp_path / "m.weights.h5", 3, 4)))
    assert len(description.layers) == 3


@pytest.mark.parametrize(("layers", "variables"), [(1, 40), (40, 4)])
def test_a_group_past_the_link_budget_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layers: int, variables: int
) -> None:
    path = _weights_file(tmp_path / "m.weights.h5", layers, variables)
    monkeypatch.setattr(h5util, "MAX_LINKS", 30)
    with pytest.raises(ModelReadError, match="more than 30 links to visit"):
        read_model(str(path))


def test_a_path_deeper_than_the_walks_limit_is_refused_before_any_lookup(tmp_path: Path) -> None:
    """A weight name of thousands of components through a group that links to itself would
    open (and keep) a group per component: refused at the depth a walk is refused at."""
    path = tmp_path / "loop.h5"
    with h5py.File(path, "w") as h5:
        group = h5.create_group("bn")
        group["a"] = group  # a hard link back to itself
        group["a"].create_dataset("gamma", data=np.ones(4, "f"))
    deep = "/".join(["a"] * (h5util.MAX_DEPTH + 1) + ["gamma"])
    with h5py.File(path, "r") as h5, h5util.budgeted():
        bn = h5util.open_group(h5.id, "bn", "")
        found = h5util.lookup_id(bn, "/".join(["a"] * 3 + ["gamma"]), "bn")
        assert found is not None  # a few components are looked up
        with pytest.raises(ModelReadError) as raised:
            h5util.lookup_id(bn, deep, "bn")
    assert str(raised.value) == f"bn names a path deeper than {h5util.MAX_DEPTH} levels"
