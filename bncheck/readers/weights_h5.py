"""Weights-only HDF5 files: Keras 3 ``.weights.h5`` and legacy ``save_weights`` ``.h5``.

There is no configuration, so BatchNorm layers are recognised by their variables: by the
Keras 3 group names derived from the BN class, or by variable names (``gamma``, ``beta``,
``moving_mean``, ``moving_variance``/``moving_var``) under any layer name. Momentum, epsilon,
trainable flags and initializers are unknown; Keras's default initial values are assumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import BNLayer, ModelDescription
from bncheck.readers import keras3_layout
from bncheck.readers.h5util import lookup, read_bn_array, text_list_attr
from bncheck.readers.keras3_layout import KnownLayer, check_shapes
from bncheck.readers.varnames import VariableScope, collapse_repeats, group_by_scope, split_name

INFERRED_BY_NAMES = "BatchNormalization (by variable names)"
NO_CONFIG_NOTE = (
    "weights-only file: momentum, epsilon, trainable flags and initializers are not recorded; "
    "Keras's default initial values (gamma 1, beta 0, moving_mean 0, moving_variance 1) are assumed"
)


def is_keras3_layout(h5: h5py.File) -> bool:
    return "layers" in h5 or "vars" in h5


def read(path: str, h5: h5py.File) -> ModelDescription:
    if is_keras3_layout(h5) and "layer_names" not in h5.attrs:
        layers = _keras3_layers(h5)
    else:
        layers = _named_layers(h5)
        if not layers and "layer_names" not in h5.attrs:
            raise ModelReadError("HDF5 file is not a Keras model or weights file")
    return ModelDescription(
        path=path, format="weights-h5", layers=tuple(layers), notes=(NO_CONFIG_NOTE,)
    )


def _keras3_layers(h5: h5py.File) -> list[BNLayer]:
    top_name = keras3_layout.saved_name(h5)
    known: dict[tuple[str, ...], KnownLayer] = (
        {(): KnownLayer((top_name,), None)} if top_name else {}
    )
    return list(keras3_layout.scan_for_batchnorm(h5, frozenset(), known))


def _named_layers(h5: h5py.File) -> list[BNLayer]:
    layers = []
    for scope in group_by_scope(_named_entries(h5)):
        if not scope.is_batchnorm:
            continue
        layers.append(_layer_from_scope(h5, scope))
    return layers


def _named_entries(h5: h5py.File) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """``(scope, leaf, dataset path)`` for every variable, in model order when it is recorded."""
    layer_names = text_list_attr(h5, "layer_names")
    if layer_names is None:
        # Every link, soft and external ones included: reading goes through `lookup`, which
        # follows links inside the file and refuses links out of it.
        names: list[str] = []
        h5.visit_links(names.append)
        for name in names:
            scope, leaf = split_name(name)
            yield collapse_repeats(scope), leaf, name
        return
    for layer_name in layer_names:
        group = lookup(h5, layer_name)
        if not isinstance(group, h5py.Group):
            raise ModelReadError(f"layer_names lists {layer_name!r} but the file has no such group")
        for weight_name in text_list_attr(group, "weight_names") or []:
            scope, leaf = split_name(weight_name)
            yield collapse_repeats((layer_name, *scope)), leaf, f"{layer_name}/{weight_name}"


def _layer_from_scope(h5: h5py.File, scope: VariableScope) -> BNLayer:
    where = "/".join(scope.scope)
    if not scope.has_moving_stats:
        missing = "moving_variance" if "moving_mean" in scope.keys else "moving_mean"
        raise ModelReadError(f"{where} has BatchNorm variables but no {missing}")
    arrays = {role: read_bn_array(lookup(h5, key), key) for role, key in scope.keys.items()}
    check_shapes(arrays, where)
    return BNLayer.without_config(
        arrays,
        path=where,
        name=scope.scope[-1],
        class_name=INFERRED_BY_NAMES,
        source=", ".join(scope.keys[role] for role in arrays),
        locations={role: scope.keys[role] for role in arrays},
    )
