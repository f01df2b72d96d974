"""Legacy full-model HDF5 files (``model.save("m.h5")``) from Keras 3 and Keras 2 / tf.keras.

The configuration is the ``model_config`` attribute; weights live under ``model_weights`` in one
group per top-level layer, whose ``weight_names`` attribute lists its variables. A nested model's
weights all sit in its one group, trainable before non-trainable, named ``inner/bn/gamma`` by
Keras 3 and ``bn/gamma:0`` by Keras 2. Weights are matched to layers by name, never by position.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import BNLayer, ModelDescription
from bncheck.readers.h5util import (
    lookup,
    parse_json_config,
    read_bn_array,
    text_attr,
    text_list_attr,
)
from bncheck.readers.keras3_layout import check_shapes
from bncheck.readers.keras_config import BN_CLASSES, LayerConfig, bn_settings, walk_layers
from bncheck.readers.varnames import VariableScope, collapse_repeats, group_by_scope, split_name


def is_full_model(h5: h5py.File) -> bool:
    return "model_config" in h5.attrs


def read(path: str, h5: h5py.File) -> ModelDescription:
    config_text = text_attr(h5, "model_config")
    if not config_text:
        raise ModelReadError("the model_config attribute is empty")
    config = parse_json_config(config_text, "the model_config attribute")
    weights_root = lookup(h5, "model_weights")
    if not isinstance(weights_root, h5py.Group):
        raise ModelReadError("HDF5 model has a model_config but no model_weights group")
    scopes = ScopeIndex(weights_root)
    layers = [
        _bn_layer(layer, scopes) for layer in walk_layers(config) if layer.class_name in BN_CLASSES
    ]
    return ModelDescription(path=path, format="h5", layers=tuple(layers))


class ScopeIndex:
    """BatchNorm variable scopes per top-level layer group, handed out once each."""

    def __init__(self, weights_root: h5py.Group) -> None:
        self._root = weights_root
        self._scopes: dict[str, list[VariableScope]] = {}
        self._taken: set[tuple[str, ...]] = set()

    def take(self, layer: LayerConfig) -> VariableScope:
        """The scope holding ``layer``'s variables: the one named exactly by its path below the
        outermost model, else the first unused one ending in its name (or its wrapper's)."""
        below_model = layer.path[1:] or layer.path
        candidates = [
            scope
            for scope in self._group_scopes(below_model[0])
            if scope.scope[-1] in layer.variable_scopes and scope.scope not in self._taken
        ]
        exact = [scope for scope in candidates if scope.scope == below_model]
        if not candidates:
            raise ModelReadError(f"no weights found for BatchNorm layer {'/'.join(layer.path)}")
        chosen = (exact or candidates)[0]
        self._taken.add(chosen.scope)
        return chosen

    def read(self, scope: VariableScope, role: str) -> object:
        return lookup(self._root, scope.keys[role])

    def _group_scopes(self, group_name: str) -> list[VariableScope]:
        if group_name not in self._scopes:
            self._scopes[group_name] = group_by_scope(self._entries(group_name))
        return self._scopes[group_name]

    def _entries(self, group_name: str) -> Iterator[tuple[tuple[str, ...], str, str]]:
        group = lookup(self._root, group_name)
        if not isinstance(group, h5py.Group):
            return
        for weight_name in text_list_attr(group, "weight_names") or []:
            scope, leaf = split_name(weight_name)
            yield collapse_repeats((group_name, *scope)), leaf, f"{group_name}/{weight_name}"


def _bn_layer(layer: LayerConfig, scopes: ScopeIndex) -> BNLayer:
    settings = bn_settings(layer)
    scope = scopes.take(layer)
    where = "/".join(layer.path)
    expected = ["moving_mean", "moving_variance"]
    if settings["scale"]:
        expected.insert(0, "gamma")
    if settings["center"]:
        expected.insert(len(expected) - 2, "beta")
    missing = [role for role in expected if role not in scope.keys]
    if missing:
        raise ModelReadError(f"{where}: the weights have no {', '.join(missing)}")
    arrays = {role: read_bn_array(scopes.read(scope, role), f"{where}/{role}") for role in expected}
    check_shapes(arrays, where)
    return BNLayer.from_arrays(
        arrays,
        path=where,
        name=layer.name,
        class_name=layer.class_name,
        source="model_weights/" + "/".join(scope.scope),
        locations={role: f"model_weights/{scope.keys[role]}" for role in expected},
        **settings,
    )
