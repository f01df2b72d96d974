"""Legacy full-model HDF5 files (``model.save("m.h5")``): Keras 1, Keras 2, tf.keras, Keras 3.

The configuration is the ``model_config`` attribute; weights live under ``model_weights`` in one
group per top-level layer, whose ``weight_names`` attribute lists its variables in order. Keras's
loader goes by that group and that order, never by the names: real files name variables after
scopes TensorFlow made unique (``batch_normalization_1_1/gamma:0`` in group
``batch_normalization_1``), or after another layer altogether. bncheck reads the same way, with
the order ``legacy_order`` derives for the Keras that wrote the file, and uses the names as a
cross-check: a disagreement becomes a note. When positions cannot be known (a layer class bncheck
does not know, or a group holding more or fewer variables than its configuration implies), the
BatchNorm arrays are found by their names instead, and the report says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import BNLayer, IncompleteLayer, ModelDescription
from bncheck.readers.codecs.h5util import (
    ObjectID,
    budgeted,
    lookup,
    lookup_id,
    names_attr,
    parse_json_config,
    read_bn_array_id,
    text_attr,
)
from bncheck.readers.keras.keras3_layout import bn_roles, check_shapes
from bncheck.readers.keras.keras_config import (
    BN_CLASSES,
    MODEL_CLASSES,
    LayerConfig,
    bn_settings,
    children,
    keras1_mode,
    walk_layers,
)
from bncheck.readers.keras.legacy_order import (
    Generation,
    Variable,
    generation,
    group_variables,
    name_parts,
    owns,
    subtree,
)
from bncheck.readers.tensorflow.varnames import is_uniquified, role_of

KERAS1_NOTE = (
    "Keras 1 file: each BatchNormalization's running_std is read as its moving variance, which "
    "it holds (Keras 1.0.6 and later), as Keras 2's loader does"
)


def is_full_model(h5: h5py.File) -> bool:
    return "model_config" in h5.attrs


def read(path: str, h5: h5py.File) -> ModelDescription:
    with budgeted():
        return _read(path, h5)


def _read(path: str, h5: h5py.File) -> ModelDescription:
    config_text = text_attr(h5, "model_config")
    if not config_text:
        raise ModelReadError("the model_config attribute is empty")
    config = parse_json_config(config_text, "the model_config attribute")
    weights_root = lookup(h5, "model_weights")
    if not isinstance(weights_root, h5py.Group):
        raise ModelReadError("HDF5 model has a model_config but no model_weights group")
    configured = list(walk_layers(config))
    reading = _Reading(
        weights_root,
        generation(text_attr(weights_root, "keras_version")),
        frozenset(layer.name for layer in configured),
    )
    top_level = list(children(configured[0]))
    for layer in top_level:
        reading.read_group(layer)
    reading.check_group_order(top_level)
    if reading.generation is Generation.KERAS1 and reading.layers:
        reading.notes.insert(0, KERAS1_NOTE)
    return ModelDescription(
        path=path,
        format="h5",
        layers=tuple(reading.layers),
        notes=tuple(reading.notes),
        incomplete=tuple(reading.incomplete),
    )


@dataclass
class _Reading:
    """The BatchNorm layers of one file, group by group."""

    root: h5py.Group
    generation: Generation
    layer_names: frozenset[str]
    """Every layer name in the configuration, to tell a name that points at another layer."""
    layers: list[BNLayer] = field(default_factory=list)
    incomplete: list[IncompleteLayer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def read_group(self, top: LayerConfig) -> None:
        """Read the BatchNorm layers inside top-level layer ``top`` from its group."""
        batchnorms = [layer for layer in subtree(top) if layer.class_name in BN_CLASSES]
        if not batchnorms:
            return
        where = f"model_weights/{top.name}"
        group = lookup(self.root, top.name)
        if not isinstance(group, h5py.Group):
            group = None
        names = (names_attr(group, "weight_names") if group is not None else None) or []
        variables = group_variables(top, self.generation, names)
        by_position = variables is not None and len(variables) == len(names)
        if variables is not None and by_position:
            positions = _positions(variables)
        else:
            positions = _positions_by_name(top, batchnorms, names)
            if names:
                self.notes.append(_count_note(top, where, len(names), variables))
        for layer in batchnorms:
            mode = keras1_mode(layer)
            if mode in (1, 2):
                self.notes.append(_mode_note("/".join(layer.path), mode))
                continue
            roles = positions.get(layer.path, {})
            if by_position:
                self._cross_check(layer, roles, names, where)
            self._read_layer(layer, roles, group, names, where)

    def _read_layer(
        self,
        layer: LayerConfig,
        roles: dict[str, int],
        group: h5py.Group | None,
        names: Sequence[str],
        where: str,
    ) -> None:
        """Read one layer's arrays at their positions; a layer lacking some is incomplete."""
        settings = bn_settings(layer)
        expected = [role for role in bn_roles(settings["center"], settings["scale"], False) if role]
        path = "/".join(layer.path)
        # A name the group lists without a dataset behind it is as missing as an unlisted one.
        # The arrays are looked up on HDF5's identifiers, each group on the way opened once.
        opened: dict[tuple[str, ...], ObjectID | None] = {}
        datasets = {
            role: lookup_id(group.id, names[roles[role]], where, opened)
            for role in expected
            if role in roles and group is not None
        }
        found = {role: node for role, node in datasets.items() if node is not None}
        missing = tuple(role for role in expected if role not in found)
        source = _source(where, [roles[role] for role in found], names)
        if missing:
            self.incomplete.append(IncompleteLayer(path, tuple(found), missing, source))
            return
        arrays: dict[str, np.ndarray] = {
            role: read_bn_array_id(
                dataset, address, f"{where}/{names[roles[role]]}", f"{path}/{role}"
            )
            for role, (dataset, address) in found.items()
        }
        check_shapes(arrays, path)
        self.layers.append(
            BNLayer.from_arrays(
                arrays,
                path=path,
                name=layer.name,
                class_name=layer.class_name,
                source=source,
                locations={role: f"{where}/{names[roles[role]]}" for role in arrays},
                **settings,
            )
        )

    def _cross_check(
        self, layer: LayerConfig, roles: dict[str, int], names: Sequence[str], where: str
    ) -> None:
        """A note when the names of the variables read by position say something else."""
        odd = [
            f"{role} is {names[index]!r}"
            for role, index in roles.items()
            if role_of(names[index]) != role or not self._named_after(layer, names[index])
        ]
        if odd:
            self.notes.append(
                f"{'/'.join(layer.path)}: read by position in {where}, as Keras's loader does; "
                f"the weight names say otherwise ({', '.join(odd[:2])})"
            )

    def _named_after(self, layer: LayerConfig, name: str) -> bool:
        """Whether a name is scoped by the layer, or by a uniquified form of its name that is
        no other layer's name. A name without a scope says nothing about its owner."""
        parts = name_parts(name)
        if not parts:
            return True
        scopes = layer.variable_scopes
        if any(part in scopes for part in parts):
            return True
        return any(
            is_uniquified(part, scope) and part not in self.layer_names
            for part in parts
            for scope in scopes
        )

    def check_group_order(self, top_level: list[LayerConfig]) -> None:
        """Keras pairs the n-th group holding weights with the n-th layer holding weights; a
        note when the file's ``layer_names`` order differs from the configuration's."""
        listed = names_attr(self.root, "layer_names") or []
        configured = [layer.name for layer in top_level]
        if [name for name in listed if name in configured] == [
            name for name in configured if name in listed
        ]:
            return  # the same order, without reading every group's weight list
        with_weights = [name for name in listed if self._has_weights(name)]
        if with_weights != [name for name in configured if name in with_weights]:
            self.notes.append(
                "model_weights lists its layer groups in another order than the configuration; "
                "Keras pairs them by position, bncheck by group name"
            )

    def _has_weights(self, name: str) -> bool:
        group = lookup(self.root, name)
        return isinstance(group, h5py.Group) and bool(names_attr(group, "weight_names"))


def _positions(variables: list[Variable]) -> dict[tuple[str, ...], dict[str, int]]:
    """Each BatchNorm layer's arrays, by role, as positions in the group's weight list."""
    positions: dict[tuple[str, ...], dict[str, int]] = {}
    for index, variable in enumerate(variables):
        if variable.role is not None:
            positions.setdefault(variable.owner, {})[variable.role] = index
    return positions


def _positions_by_name(
    top: LayerConfig, batchnorms: list[LayerConfig], names: Sequence[str]
) -> dict[tuple[str, ...], dict[str, int]]:
    """Positions found by the weights' names, when the group's order cannot be known.

    A group that is one BatchNorm layer (or its wrapper) holds only that layer's variables, so the
    leaf names suffice. Inside a nested model each name is given to the layer its scope names,
    exactly (``bn/gamma:0``) before uniquified (``bn_1/gamma:0``)."""
    positions: dict[tuple[str, ...], dict[str, int]] = {}
    one_layer = all(layer.class_name not in MODEL_CLASSES for layer in subtree(top))
    if len(batchnorms) == 1 and one_layer:
        for index, name in enumerate(names):
            role = role_of(name)
            if role is not None:
                positions.setdefault(batchnorms[0].path, {}).setdefault(role, index)
        return positions
    taken: set[int] = set()
    for exact in (True, False):
        for index, name in enumerate(names):
            role = role_of(name)
            if role is None or index in taken:
                continue
            owners = [layer for layer in batchnorms if _scoped_by(layer, name, exact)]
            if len(owners) == 1 and role not in positions.get(owners[0].path, {}):
                positions.setdefault(owners[0].path, {})[role] = index
                taken.add(index)
    return positions


def _scoped_by(layer: LayerConfig, name: str, exact: bool) -> bool:
    parts = name_parts(name)
    if exact:
        return any(part in layer.variable_scopes for part in parts)
    return owns(layer, name)


def _source(where: str, indices: list[int], names: Sequence[str]) -> str:
    if len(indices) == len(names):
        return where
    return f"{where} (weights {', '.join(map(str, sorted(indices)))})"


def _count_note(top: LayerConfig, where: str, count: int, variables: list[Variable] | None) -> str:
    if variables is None:
        why = "a layer of a class bncheck does not know holds variables"
    else:
        why = (
            f"it holds {count} weights where the configuration implies {len(variables)}, "
            "so Keras's loader would refuse it"
        )
    return f"{top.name}: BatchNorm arrays found by their names in {where}: {why}"


def _mode_note(path: str, mode: int) -> str:
    kind = "each sample" if mode == 1 else "each batch"
    return (
        f"{path}: Keras 1 BatchNormalization mode={mode} normalises {kind} by its own statistics, "
        "at inference too, so its running statistics are never used and are not judged; no Keras "
        "since 2.0 can load this layer (mode was removed)"
    )
