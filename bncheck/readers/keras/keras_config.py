"""Walk a Keras model configuration (Keras 3 or Keras 2 / tf.keras) without importing Keras.

Besides each layer's nested path, the walk computes where Keras 3's saving library puts the
layer's variables in ``model.weights.h5``. Keras names those groups not by layer name but by the
snake-cased class name, made unique with ``_1``, ``_2`` counters within each container, in the
order of ``model.layers`` (``keras/src/saving/saving_lib.py``: ``_save_container_state``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

from bncheck.errors import ModelReadError
from bncheck.model import InitialValues
from bncheck.records import record

MODEL_CLASSES = frozenset({"Functional", "Model", "Sequential"})
BN_CLASSES = frozenset(
    {"BatchNormalization", "SyncBatchNormalization", "BatchNormalizationV1", "BatchNormalizationV2"}
)

#: Keras 3's own layer classes that hold no other layer, so that nothing below a layer of one in
#: a weights file is loaded but its own variables.
LEAF_CLASSES = BN_CLASSES | frozenset(
    {
        "InputLayer", "Dense", "EinsumDense", "Embedding", "Identity", "Masking", "Lambda",
        "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
        "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
        "Activation", "ReLU", "LeakyReLU", "PReLU", "ELU", "Softmax",
        "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot",
        "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
        "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization",
        "Flatten", "Reshape", "Permute", "RepeatVector",
        "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
        "Cropping1D", "Cropping2D", "Cropping3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D",
        "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
        "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
        "LayerNormalization", "GroupNormalization", "UnitNormalization",
        "Rescaling", "Resizing", "CenterCrop",
    }
)  # fmt: skip


@record
class LayerConfig:
    """One layer of a configuration, placed in the model tree."""

    name: str
    class_name: str
    config: Mapping[str, Any]
    path: tuple[str, ...]
    """Layer names from the outermost model down to this layer (inclusive)."""
    saving_path: tuple[str, ...]
    """Group path of this layer in a Keras 3 weights file, e.g. ``("layers", "functional",
    "layers", "batch_normalization_3")``; ``()`` for the outermost model."""
    trainable: bool
    """False when this layer or any enclosing model has ``trainable=False``."""
    call_kwargs: tuple[Mapping[str, Any], ...]
    """Keyword arguments of each call recorded in the enclosing model's graph."""
    wrapper: str | None = None
    """Name of the wrapper (``TimeDistributed``, ...) holding this layer; Keras 2 scopes the
    wrapped layer's variables by the wrapper's name."""
    module: str | None = None
    """The module Keras 3 records for the layer's class (``keras.layers`` for its own)."""

    @property
    def variable_scopes(self) -> tuple[str, ...]:
        """Names the layer's variables may be scoped by in name-based formats."""
        return (self.name,) if self.wrapper is None else (self.name, self.wrapper)


def holds_no_layer(layer: LayerConfig) -> bool:
    """Whether ``layer`` is of one of Keras 3's own classes that hold no other layer."""
    return layer.class_name in LEAF_CLASSES and layer.module == "keras.layers"


@functools.lru_cache(maxsize=1024)
def to_snake_case(name: str) -> str:
    """Keras's ``keras.src.utils.naming.to_snake_case``."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def walk_layers(model_config: Mapping[str, Any]) -> Iterator[LayerConfig]:
    """Yield the model and every layer inside it, depth first, in ``model.layers`` order."""
    class_name, config = _class_and_config(model_config, "model configuration")
    name = _layer_name(config, model_config, default="model")
    top = LayerConfig(
        name=name,
        class_name=class_name,
        config=config,
        path=(name,),
        saving_path=(),
        trainable=config.get("trainable", True) is not False,
        call_kwargs=(),
    )
    yield from _walk(top)


def _walk(layer: LayerConfig) -> Iterator[LayerConfig]:
    yield layer
    for child in children(layer):
        yield from _walk(child)


def children(parent: LayerConfig) -> Iterator[LayerConfig]:
    """The layers directly inside a model (in ``model.layers`` order) or a wrapper."""
    config = parent.config
    if parent.class_name in MODEL_CLASSES and "layers" in config:
        entries = config["layers"]
        if not isinstance(entries, list):
            raise ModelReadError(f"layers of {'/'.join(parent.path)} is not a list")
        saved = entries
        if parent.class_name == "Sequential" and entries and _is_input_layer(entries[0]):
            # Sequential.layers omits its InputLayer, so the saving counters skip it too.
            saved = entries[1:]
        used_names: dict[str, int] = {}
        for entry in saved:
            class_name, child_config = _class_and_config(entry, f"a layer of {parent.name}")
            group = _unique_name(to_snake_case(_saving_class(class_name, child_config)), used_names)
            yield _child(parent, entry, class_name, child_config, ("layers", group))
    elif isinstance(config.get("layer"), Mapping):
        # Wrappers (TimeDistributed, Bidirectional, ...) keep the wrapped layer as `.layer`.
        entry = config["layer"]
        class_name, child_config = _class_and_config(entry, f"the layer wrapped by {parent.name}")
        child = _child(parent, entry, class_name, child_config, ("layer",))
        yield replace(child, wrapper=parent.name)


def _child(
    parent: LayerConfig,
    entry: Mapping[str, Any],
    class_name: str,
    config: Mapping[str, Any],
    saving_suffix: tuple[str, ...],
) -> LayerConfig:
    name = _layer_name(config, entry, default=to_snake_case(class_name))
    return LayerConfig(
        name=name,
        class_name=class_name,
        config=config,
        path=(*parent.path, name),
        saving_path=(*parent.saving_path, *saving_suffix),
        trainable=parent.trainable and config.get("trainable", True) is not False,
        call_kwargs=tuple(_call_kwargs(entry.get("inbound_nodes"))),
        module=module if isinstance(module := entry.get("module"), str) else None,
    )


def _class_and_config(entry: object, what: str) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(entry, Mapping):
        raise ModelReadError(f"{what} is not an object")
    class_name = entry.get("class_name")
    if not isinstance(class_name, str):
        raise ModelReadError(f"{what} has no class_name")
    config = entry.get("config", {})
    if isinstance(config, list):
        # Keras 2.2-era Sequential: the config is the list of layers itself.
        config = {"layers": config}
    if not isinstance(config, Mapping):
        raise ModelReadError(f"{what} ({class_name}) has a config that is not an object")
    return class_name, config


def _layer_name(config: Mapping[str, Any], entry: Mapping[str, Any], default: str) -> str:
    for candidate in (config.get("name"), entry.get("name")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return default


def _is_input_layer(entry: object) -> bool:
    return isinstance(entry, Mapping) and entry.get("class_name") == "InputLayer"


def _saving_class(class_name: str, config: Mapping[str, Any]) -> str:
    # A functional model serialised as "Model" is rebuilt as a Functional instance.
    if class_name == "Model" and "layers" in config:
        return "Functional"
    return class_name


def _unique_name(name: str, used_names: dict[str, int]) -> str:
    """Keras's ``saving_lib._get_unique_name``."""
    if name in used_names:
        used_names[name] += 1
        return f"{name}_{used_names[name]}"
    used_names[name] = 0
    return name


def _call_kwargs(inbound_nodes: object) -> Iterator[Mapping[str, Any]]:
    """Keyword arguments of each call, from Keras 3 or Keras 2 ``inbound_nodes``."""
    if not isinstance(inbound_nodes, list):
        return
    for node in inbound_nodes:
        if isinstance(node, Mapping):
            # Keras 3: {"args": [...], "kwargs": {...}}
            kwargs = dict(node.get("kwargs") or {})
            args = node.get("args")
            if isinstance(args, list) and len(args) >= 2 and isinstance(args[1], bool):
                kwargs.setdefault("training", args[1])
            yield kwargs
        elif isinstance(node, list):
            # Keras 2: [[inbound_layer, node_index, tensor_index, kwargs], ...]
            kwargs = {}
            for tensor in node:
                if isinstance(tensor, list) and len(tensor) >= 4 and isinstance(tensor[3], Mapping):
                    kwargs = dict(tensor[3])
                    break
            yield kwargs


def bn_settings(layer: LayerConfig) -> dict[str, Any]:
    """The BatchNormalization configuration fields of ``BNLayer``, from a layer's config."""
    config = layer.config
    return {
        "axis": _axis(config.get("axis", -1)),
        "momentum": _number(config.get("momentum", 0.99), "momentum", layer),
        "epsilon": _number(config.get("epsilon", 1e-3), "epsilon", layer),
        "center": config.get("center", True) is not False,
        "scale": config.get("scale", True) is not False,
        "trainable": layer.trainable,
        "synchronized": layer.class_name == "SyncBatchNormalization"
        or config.get("synchronized") is True,
        "initial": InitialValues(
            gamma=_initial_value(config.get("gamma_initializer", "ones")),
            beta=_initial_value(config.get("beta_initializer", "zeros")),
            moving_mean=_initial_value(config.get("moving_mean_initializer", "zeros")),
            moving_variance=_initial_value(config.get("moving_variance_initializer", "ones")),
        ),
        "call_kwargs": layer.call_kwargs,
    }


def renorm(layer: LayerConfig) -> bool:
    return layer.config.get("renorm") is True


def own_trainable(layer: LayerConfig) -> bool:
    """The layer's own ``trainable`` flag, whatever the models around it say."""
    return layer.config.get("trainable", True) is not False


def keras1_mode(layer: LayerConfig) -> int | None:
    """A Keras 1 BatchNormalization's ``mode`` (0, 1 or 2); ``None`` when the config has none.

    Mode 0 normalises with the moving statistics at inference. Mode 1 normalises each sample by
    its own statistics, mode 2 each batch by its own, in training and at inference alike: their
    running statistics are never used (``keras/layers/normalization.py`` in Keras 1.2.2).
    """
    mode = layer.config.get("mode")
    return mode if isinstance(mode, int) and not isinstance(mode, bool) else None


def _axis(value: object) -> tuple[int, ...] | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return (value,)
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    return None


def _number(value: object, what: str, layer: LayerConfig) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ModelReadError(f"{'/'.join(layer.path)}: {what} is {value!r}, not a number")
    return float(value)


_CONSTANT_INITIALIZERS = {"zeros": 0.0, "zero": 0.0, "ones": 1.0, "one": 1.0}


def _initial_value(initializer: object) -> float | None:
    """The constant an initializer produces, or ``None`` when it is not a constant."""
    if isinstance(initializer, str):
        return _CONSTANT_INITIALIZERS.get(to_snake_case(initializer))
    if not isinstance(initializer, Mapping):
        return None
    class_name = initializer.get("class_name")
    if not isinstance(class_name, str):
        return None
    if class_name == "Constant":
        config = initializer.get("config")
        value = config.get("value") if isinstance(config, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return None
    return _CONSTANT_INITIALIZERS.get(to_snake_case(class_name))
