"""Weights-only HDF5 files: Keras 3 ``.weights.h5`` and legacy ``save_weights`` ``.h5``.

There is no configuration, so BatchNorm layers are recognised by their variables: by the
Keras 3 group names derived from the BN class, or by variable names (``gamma``, ``beta``,
``moving_mean``, ``moving_variance``/``moving_var``, Keras 1's ``<layer>_running_std``) under any
layer name. In a legacy file each top-level layer's variables sit in the group of that name, so a
scope TensorFlow made unique (``batch_normalization_1_1/gamma:0`` in group
``batch_normalization_1``) still belongs to the group's layer. Momentum, epsilon, trainable flags
and initializers are unknown; Keras's default initial values are assumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import h5py

from bncheck.errors import ModelReadError
from bncheck.model import (
    ARRAY_NAMES,
    INFERRED_BY_NAMES,
    MOVING_STATS,
    BNLayer,
    IncompleteLayer,
    ModelDescription,
)
from bncheck.readers.codecs.h5util import (
    budgeted,
    child,
    lookup,
    names_attr,
    read_bn_array,
    text_attr,
    walk_links,
)
from bncheck.readers.keras import keras3_layout
from bncheck.readers.keras.keras3_layout import KnownLayer, check_shapes
from bncheck.readers.tensorflow.varnames import (
    LEAF_ROLES,
    VariableScope,
    collapse_repeats,
    group_by_scope,
    is_uniquified,
    keras1_name,
    split_name,
)

NO_CONFIG_NOTE = (
    "weights-only file: momentum, epsilon, trainable flags and initializers are not recorded; "
    "Keras's default initial values (gamma 1, beta 0, moving_mean 0, moving_variance 1) are assumed"
)
KERAS1_NOTE = (
    "Keras 1 weights file: running_std is read as the moving variance, as Keras 2's loader does; "
    "it holds one from Keras 1.0.6 on, but Keras 1.0.0 to 1.0.5 stored a standard deviation there, "
    "and the file does not say which Keras wrote it"
)


def is_keras3_layout(h5: h5py.File) -> bool:
    return child(h5, "layers") is not None or child(h5, "vars") is not None


def read(path: str, h5: h5py.File) -> ModelDescription:
    with budgeted():
        return _read(path, h5)


def _read(path: str, h5: h5py.File) -> ModelDescription:
    legacy = names_attr(h5, "layer_names") is not None
    notes = [NO_CONFIG_NOTE]
    incomplete: list[IncompleteLayer] = []
    if is_keras3_layout(h5) and not legacy:
        layers = _keras3_layers(h5)
    else:
        scopes = [scope for scope in group_by_scope(_named_entries(h5)) if scope.is_batchnorm]
        if not scopes and not legacy:
            raise ModelReadError("HDF5 file is not a Keras model or weights file")
        layers = [_layer_from_scope(h5, scope) for scope in scopes if scope.has_moving_stats]
        incomplete = [_incomplete(scope) for scope in scopes if not scope.has_moving_stats]
        if legacy and text_attr(h5, "keras_version") is None and _keras1_names(h5):
            notes.append(KERAS1_NOTE)
    return ModelDescription(
        path=path,
        format="weights-h5",
        layers=tuple(layers),
        notes=tuple(notes),
        incomplete=tuple(incomplete),
    )


def _keras3_layers(h5: h5py.File) -> list[BNLayer]:
    top_name = keras3_layout.saved_name(h5.id, "")
    known: dict[tuple[str, ...], KnownLayer] = (
        {(): KnownLayer((top_name,), None)} if top_name else {}
    )
    return list(keras3_layout.scan_for_batchnorm(h5.id, frozenset(), known))


def _named_entries(h5: h5py.File) -> Iterator[tuple[tuple[str, ...], str, str]]:
    """``(scope, leaf, dataset path)`` for every variable, in model order when it is recorded."""
    layer_names = names_attr(h5, "layer_names")
    if layer_names is None:
        # Every object, each group once; a soft or external link on the way is refused.
        for name, _ in walk_links(h5):
            scope, leaf = split_name(name)
            yield collapse_repeats(scope), leaf, name
        return
    for layer_name in layer_names:
        group = lookup(h5, layer_name)
        if not isinstance(group, h5py.Group):
            raise ModelReadError(f"layer_names lists {layer_name!r} but the file has no such group")
        for weight_name in names_attr(group, "weight_names") or []:
            scope, leaf = _keras2_spelling(*split_name(weight_name))
            yield _group_scope(layer_name, scope), leaf, f"{layer_name}/{weight_name}"


def _keras2_spelling(scope: tuple[str, ...], leaf: str) -> tuple[tuple[str, ...], str]:
    """Keras 1's ``bn_1_running_std`` as Keras 2 would name it: ``bn_1/moving_variance``."""
    keras1 = None if leaf in LEAF_ROLES else keras1_name(leaf)
    if keras1 is None:
        return scope, leaf
    owner, keras2_leaf = keras1
    return (*scope, owner), keras2_leaf


def _group_scope(group: str, scope: tuple[str, ...]) -> tuple[str, ...]:
    """A variable's scope below its layer group, without the group's own name repeated, as is
    or made unique by TensorFlow (``bn_1/bn_1_1/gamma:0`` is layer ``bn_1``'s)."""
    parts = list(collapse_repeats((group, *scope)))
    if len(parts) > 1 and is_uniquified(parts[1], group):
        del parts[1]
    return tuple(parts)


def _keras1_names(h5: h5py.File) -> bool:
    """Whether any layer group lists a Keras 1 BatchNorm variable (``<layer>_running_std``)."""
    for layer_name in names_attr(h5, "layer_names") or []:
        group = lookup(h5, layer_name)
        if isinstance(group, h5py.Group):
            names = names_attr(group, "weight_names") or []
            if any(keras1_name(split_name(name)[1]) is not None for name in names):
                return True
    return False


def _incomplete(scope: VariableScope) -> IncompleteLayer:
    return IncompleteLayer(
        path="/".join(scope.scope),
        present=tuple(name for name in ARRAY_NAMES if name in scope.keys),
        missing=tuple(name for name in MOVING_STATS if name not in scope.keys),
        source=", ".join(scope.keys[name] for name in ARRAY_NAMES if name in scope.keys),
    )


def _layer_from_scope(h5: h5py.File, scope: VariableScope) -> BNLayer:
    where = "/".join(scope.scope)
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
