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

from bncheck.layer_paths import batchnorm_layers
from bncheck.model import ARRAY_NAMES, BNLayer, ModelDescription
from bncheck.readers.keras.keras_config import LayerConfig, _call_kwargs, bn_settings

#: ``ModelDescription.format`` of a model described in memory.
LIVE_FORMAT = "live"


def describe(model: Any) -> ModelDescription:
    """Every BatchNormalization layer of ``model`` (nested models and wrappers included) with its
    current variables and configuration. ``TypeError`` when ``model`` is not a Keras 3 layer."""
    return LiveModel(model).describe()


class LiveModel:
    """A live model, described as often as asked (the guard describes it at every check).

    Each layer's configuration is read once: ``get_config`` serialises the initializers, which
    costs more than the rest of a check.
    """

    def __init__(self, model: Any) -> None:
        import keras

        if not isinstance(model, keras.layers.Layer):
            raise TypeError(
                f"expected a Keras 3 model or layer, not {type(model).__name__}; "
                "for a saved model use bncheck.inspect(path)"
            )
        self.model = model
        self._configs: dict[int, tuple[Any, Mapping[str, Any], tuple[Mapping[str, Any], ...]]] = {}

    def describe(self) -> ModelDescription:
        # Under JAX, fit() keeps the variables' values outside the model between syncs (each
        # variable's value is dropped meanwhile); this puts them back, as Keras's callbacks do.
        sync = getattr(self.model, "jax_state_sync", None)
        if callable(sync):
            sync()
        built, notes, variables = [], [], []
        for path, layer, parent in batchnorm_layers(self.model):
            if getattr(layer, "moving_mean", None) is None:
                notes.append(f"{path} has no variables yet (the layer was never built)")
                continue
            names = [name for name in ARRAY_NAMES if getattr(layer, name, None) is not None]
            built.append((path, layer, parent, names))
            variables += [getattr(layer, name) for name in names]
        values = iter(read_variables(variables))
        layers = [
            self._layer(path, layer, parent, {name: next(values) for name in names})
            for path, layer, parent, names in built
        ]
        return ModelDescription(
            path=self.model.name, format=LIVE_FORMAT, layers=tuple(layers), notes=tuple(notes)
        )

    def _layer(self, path: str, layer: Any, parent: Any, arrays: dict[str, np.ndarray]) -> BNLayer:
        if id(layer) not in self._configs:
            calls = tuple(_call_kwargs(list(recorded_calls(layer, parent))))
            # The layer itself is kept so that its id cannot be reused by another object.
            self._configs[id(layer)] = (layer, layer.get_config(), calls)
        _, config, calls = self._configs[id(layer)]
        # Momentum and epsilon are plain attributes a training script may change; the rest of
        # the configuration is fixed once the layer is built.
        current = {**config, "momentum": layer.momentum, "epsilon": layer.epsilon}
        layer_config = LayerConfig(
            name=layer.name,
            class_name=type(layer).__name__,
            config=current,
            path=tuple(path.split("/")),
            saving_path=(),
            # Keras 3's trainable setter passes a container's freeze down to every layer in it,
            # and BatchNormalization picks its mode from its own flag alone (`training and
            # self.trainable`), so the layer's own flag is the effective one.
            trainable=bool(layer.trainable),
            call_kwargs=calls,
        )
        return BNLayer.from_arrays(
            arrays,
            path=path,
            name=layer.name,
            class_name=layer_config.class_name,
            source=posixpath.dirname(layer.moving_mean.path),
            # A live layer's arrays are located by its variables, as a file's are by datasets:
            # recalibration writes the new statistics there.
            locations={name: getattr(layer, name).path for name in arrays},
            # Keras 3 averages each batch's biased variance, as its .keras files record.
            variance_estimator="biased",
            **bn_settings(layer_config),
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


def read_variables(variables: list[Any]) -> list[np.ndarray]:
    """Every variable's value as a NumPy copy, read together where the backend can: one
    ``tf.identity_n`` under TensorFlow (about 8 times faster than one read per variable for
    MobileNetV2's 208 BatchNorm variables, and nothing to trace), one ``jax.device_get`` under
    JAX."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        values = tf.identity_n([variable.value for variable in variables]) if variables else []
    elif backend == "jax":
        import jax

        values = jax.device_get([variable.value for variable in variables])
    else:
        from keras import ops

        values = [ops.convert_to_numpy(variable.value) for variable in variables]
    return [np.array(value, copy=True) for value in values]
