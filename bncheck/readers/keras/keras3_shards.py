"""Keras 3 sharded weights: ``model.save_weights("m.weights.json", max_shard_size=...)``.

``ShardedH5IOStore`` (keras/src/saving/saving_lib.py, Keras 3.10 and later) writes an index,
``m.weights.json``, and shards ``m_00000.weights.h5``, ``m_00001.weights.h5``, ... in the Keras 3
weights layout. The index's ``weight_map`` names, for each ``/layers/.../vars`` group, the shard
holding it; a layer whose variables straddle a shard boundary has a ``vars`` group in each shard,
its variables keeping their indices. Keras 3.10 names only the first such shard, Keras 3.11 and
later a list of them, so bncheck gathers every group from every shard the index names.

The shards are merged into one in-memory HDF5 file of the same layout, with every array small
enough to be a BatchNorm array copied and larger ones standing in by shape and type only, and
that file is read as a Keras 3 weights file. Every shard is read under the budgets of
``h5util``: no link followed, each group once, sizes checked against the bytes present, and a
dataset that is not numeric (Keras writes none) refused.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers.codecs.h5util import (
    MAX_BN_VALUES,
    MAX_JSON_BYTES,
    Walk,
    attr_value,
    budgeted,
    children,
    is_bfloat16,
    parse_json_config,
    read_values,
)
from bncheck.readers.keras import weights_h5

#: ``_create_new_shard_file``: ``f"{base_name}_{index:05}.weights.h5"``.
_SHARD_NAME = re.compile(r"^(?P<base>.+)_\d{5}\.weights\.h5$")


def is_index(path: Path) -> bool:
    """Whether a file is the ``.json`` index of sharded Keras weights."""
    if not path.name.endswith(".json") or not path.is_file():
        return False
    try:
        return _weight_map(path) is not None
    except ModelReadError:
        return False


def index_of_shard(path: Path) -> Path | None:
    """The index that lists ``path`` as one of its shards, when there is one beside it."""
    match = _SHARD_NAME.match(path.name)
    if match is None:
        return None
    index = path.with_name(f"{match['base']}.weights.json")
    try:
        shards = _shards(index) if index.is_file() else None
    except ModelReadError:
        return None
    return index if shards is not None and path.name in shards else None


def shard_files(index: Path) -> list[Path]:
    """The shards an index names, in order of first mention."""
    shards = _shards(index)
    if shards is None:
        raise ModelReadError("not a sharded Keras weights index (it has no weight_map)")
    return [index.with_name(name) for name in shards]


def read(path: str, shown_as: str | None = None) -> ModelDescription:
    """Describe the sharded weights whose index is ``path``; ``shown_as`` is the path the user
    gave, when that was one of the shards."""
    index = Path(path)
    shards = shard_files(index)
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise ModelReadError(
            f"the index names {len(missing)} shard(s) that are missing: {', '.join(missing[:3])}"
        )
    merged = h5py.File(f"{uuid.uuid4().hex}.h5", "w", driver="core", backing_store=False)
    with merged, budgeted():
        origin: dict[str, str] = {}
        for shard in shards:
            with h5py.File(shard, "r") as h5:
                _merge(h5, merged, "", shard.name, origin, Walk())
        description = weights_h5.read(shown_as or path, merged)
    layers = tuple(
        replace(
            layer,
            source=f"{', '.join(_shards_of(layer.locations.values(), origin))}: {layer.source}",
            locations={},
        )
        for layer in description.layers
    )
    note = f"sharded weights: {len(shards)} shards listed by {index.name}"
    if shown_as is not None:
        note += f", of which {Path(shown_as).name} is one; all of them were read"
    return replace(description, layers=layers, notes=(*description.notes, note))


def _weight_map(index: Path) -> dict[str, object] | None:
    """An index's ``weight_map``, or ``None`` when the JSON is no index."""
    if index.stat().st_size > MAX_JSON_BYTES:
        raise ModelReadError(f"{index.name} is larger than {MAX_JSON_BYTES >> 20} MiB")
    content = parse_json_config(index.read_bytes(), index.name)
    weight_map = content.get("weight_map")
    return weight_map if isinstance(weight_map, dict) else None


def _shards(index: Path) -> list[str] | None:
    """The shard file names of an index, or ``None`` when the JSON is no index."""
    weight_map = _weight_map(index)
    if weight_map is None:
        return None
    names: list[str] = []
    for value in weight_map.values():
        for name in value if isinstance(value, list) else [value]:
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise ModelReadError(f"{index.name} names a shard {name!r} outside its folder")
            if name not in names:
                names.append(name)
    return names


def _merge(
    source: h5py.Group,
    target: h5py.Group,
    path: str,
    shard: str,
    origin: dict[str, str],
    walk: Walk,
) -> None:
    """Copy a shard's groups into ``target``: BatchNorm-sized arrays with their values, larger
    ones by shape and type only. Only hard links are followed (``children``), each group once."""
    walk.enter(source, path.count("/") + bool(path))
    for key in source.attrs:
        if key not in target.attrs:
            target.attrs[key] = attr_value(source, key)
    for key, node in children(source):
        where = f"{path}/{key}".lstrip("/")
        if isinstance(node, h5py.Group):
            _merge(node, target.require_group(key), where, shard, origin, walk)
        elif isinstance(node, h5py.Dataset) and key not in target:
            if node.dtype.kind not in "fiu" and not is_bfloat16(node):
                raise ModelReadError(
                    f"{shard}: {where} has non-numeric type {node.dtype}; Keras weights are numbers"
                )
            if node.size <= MAX_BN_VALUES:
                copied = target.create_dataset(key, data=read_values(node, f"{shard}: {where}"))
            else:
                copied = target.create_dataset(key, shape=node.shape, dtype=node.dtype, chunks=True)
            for name in node.attrs:
                copied.attrs[name] = attr_value(node, name)
            origin[where] = shard


def _shards_of(locations: Iterable[str], origin: dict[str, str]) -> list[str]:
    names: list[str] = []
    for location in locations:
        shard = origin.get(location)
        if shard is not None and shard not in names:
            names.append(shard)
    return names
