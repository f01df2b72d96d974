"""Describe the BatchNormalization layers of a live Keras 3 model, in memory, without a file.

The description is the one the readers build from a saved model: the same ``BNLayer`` fields,
with the configuration read through the same function (``readers.keras_config.bn_settings``) from
each layer's ``get_config()``, so the static rules judge a live model exactly as they judge its
saved file. Keras is imported inside functions; any Keras 3 backend works.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from bncheck.model import ARRAY_NAMES, BNLayer, ModelDescription
from bncheck.readers.keras_config import LayerConfig, _call_kwargs, bn_settings

#: ``ModelDescription.format`` of a model described in memory.
LIVE_FORMAT = "live"


def describe(model: Any) -> ModelDescription:
    """Every BatchNormalization layer of ``model`` (nested models and wrappers included) with its
    current variables and configuration. ``TypeError`` when ``model`` is not a Keras 3 layer."""
    import keras

    if not isinstance(model, keras.layers.Layer):
        raise TypeError(
            f"expected a Keras 3 model or layer, not {type(model).__name__}; "
            "for a saved model use bncheck.inspect(path)"
        )
    # Under JAX, fit() keeps the variables' values outside the model between syncs (each
    # variable's value is dropped meanwhile); this puts them back, as Keras's own callbacks do.
    sync = getattr(model, "jax_state_sync", None)
    if callable(sync):
        sync()
    layers, notes = [], []
    for path, layer, parent in batchnorm_layers(model):
        if getattr(layer, "moving_mean", None) is None:
            notes.append(f"{path} has no variables yet (the layer was never built)")
            continue
        layers.append(live_layer(path, layer, parent))
    return ModelDescription(
        path=model.name, format=LIVE_FORMAT, layers=tuple(layers), notes=tuple(notes)
    )


def batchnorm_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """Every BatchNormalization layer with its nested path and the layer holding it, walked as
    ``probe.keras_model.batchnorm_layers`` walks them, so that paths agree everywhere."""
    import keras

    found: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, parent: Any, prefix: tuple[str, ...]) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = (*prefix, layer.name)
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(("/".join(path), layer, parent))
            return
        for child in layer._flatten_layers(include_self=False, recursive=False):
            walk(child, layer, path)

    walk(model, None, ())
    return found


def live_layer(path: str, layer: Any, parent: Any) -> BNLayer:
    """One built BatchNormalization layer as the rules see it; ``parent`` is the model or
    wrapper holding it (``None`` for a layer checked on its own)."""
    config = LayerConfig(
        name=layer.name,
        class_name=type(layer).__name__,
        config=layer.get_config(),
        path=tuple(path.split("/")),
        saving_path=(),
        # Keras 3's trainable setter already passes a container's freeze down to every layer in
        # it, and BatchNormalization picks its mode from its own flag alone
        # (`training and self.trainable`), so the layer's own flag is the effective one.
        trainable=bool(layer.trainable),
        call_kwargs=tuple(_call_kwargs(list(recorded_calls(layer, parent)))),
    )
    arrays = {
        name: variable_array(getattr(layer, name))
        for name in ARRAY_NAMES
        if getattr(layer, name, None) is not None
    }
    return BNLayer.from_arrays(
        arrays,
        path=path,
        name=layer.name,
        class_name=config.class_name,
        source=posixpath.dirname(layer.moving_mean.path),
        **bn_settings(config),
    )


def recorded_calls(layer: Any, parent: Any) -> Iterator[Mapping[str, Any]]:
    """The calls of the layer that its parent's saved configuration would record, each shaped
    like an ``inbound_nodes`` entry so that the reader's parser reads it.

    Like ``Functional.get_config``, this keeps the calls that belong to the parent's own graph
    (a layer also records the calls Keras makes while building or loading it); a Sequential
    model, a subclassed model or a wrapper records none.
    """
    from keras.src.ops.function import make_node_key

    own_nodes = getattr(parent, "_nodes", None) or ()
    for index, node in enumerate(getattr(layer, "_inbound_nodes", ())):
        if make_node_key(layer, index) in own_nodes and node.input_tensors:
            yield {"args": list(node.arguments.args), "kwargs": dict(node.arguments.kwargs)}


def variable_array(variable: Any) -> np.ndarray:
    """A copy of a variable's value as a NumPy array, whatever the backend."""
    from keras import ops

    return np.array(ops.convert_to_numpy(variable.value), copy=True)
