"""Where each variable of a top-level layer sits in its legacy HDF5 group, in the order Keras saved.

``save_weights_to_hdf5_group`` writes one group per top-level layer holding that layer's weights
as one flat list, and ``load_weights_from_hdf5_group`` assigns them back by position; names play
no part. For a plain layer the list is its variables in creation order (BatchNormalization:
gamma, beta, moving_mean, moving_variance, without gamma or beta when ``scale`` or ``center`` is
off). For a nested model each Keras generation defines the order differently:

- Keras 1.x, Keras 2.x and tf.keras (``layer.weights``, the legacy order): every layer's trainable
  variables in layer order, then every layer's non-trainable ones. A layer or model with
  ``trainable=False`` puts all its variables in the second part, its sublayers' trainable ones
  first (``Container.trainable_weights`` in keras/engine/topology.py of Keras 1.2.2 and 2.0.5,
  ``Network`` in keras/engine/network.py of 2.2.4, ``gather_non_trainable_weights`` in tf.keras,
  ``Model.non_trainable_weights`` in tf_keras/src/engine/training.py).
- Keras 3 (``_legacy_weights``: ``trainable_weights + non_trainable_weights`` of
  keras/src/layers/layer.py): the variables in layer order, those whose own flag is trainable
  first. ``trainable=False`` clears the flag of every variable below it, and a frozen model keeps
  plain layer order.

Keras's loader reads the generation from the weights group's ``keras_version`` attribute, and
takes a group without one for Keras 1.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Sequence

from bncheck.readers.keras.keras_config import (
    BN_CLASSES,
    LayerConfig,
    children,
    own_trainable,
    renorm,
)
from bncheck.readers.tensorflow.varnames import is_uniquified, keras1_name, split_name
from bncheck.records import record


class Generation(enum.Enum):
    """The Keras whose saving code wrote a legacy HDF5 file."""

    KERAS1 = "Keras 1"
    KERAS2 = "Keras 2"
    KERAS3 = "Keras 3"


def generation(keras_version: str | None) -> Generation:
    """The generation Keras's own loader assumes for a ``keras_version`` attribute."""
    if keras_version is None:
        return Generation.KERAS1
    major = keras_version.split(".", 1)[0]
    if major == "1":
        return Generation.KERAS1
    if major.isdigit() and int(major) >= 3:
        return Generation.KERAS3
    return Generation.KERAS2


@record
class Variable:
    """One entry of a layer group's flat weight list."""

    owner: tuple[str, ...]
    """Path of the layer that created it."""
    role: str | None
    """The BatchNorm array it holds; ``None`` for any other variable."""
    trainable: bool
    """Created trainable (gamma, beta, kernels) rather than not (moving statistics)."""


#: Variables a renormalising BatchNorm adds after its moving statistics, by their leaf names
#: (tf.keras 1.x: renorm_mean, renorm_mean_weight, renorm_stddev, renorm_stddev_weight; TF 2 and
#: Keras 3: moving_stddev, renorm_mean, renorm_stddev).
RENORM_LEAVES = frozenset(
    {"moving_stddev", "renorm_mean", "renorm_mean_weight", "renorm_stddev", "renorm_stddev_weight"}
)

_KERNEL_AND_BIAS = frozenset(
    {
        "Dense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "LocallyConnected1D",
        "LocallyConnected2D",
        # Keras 1 names
        "Convolution1D",
        "Convolution2D",
        "Convolution3D",
        "AtrousConvolution1D",
        "AtrousConvolution2D",
        "Deconvolution2D",
    }
)
_TWO_KERNELS_AND_BIAS = frozenset({"SeparableConv1D", "SeparableConv2D", "SeparableConvolution2D"})


def group_variables(
    top: LayerConfig, generation: Generation, names: Sequence[str]
) -> list[Variable] | None:
    """The variables of the group of top-level layer ``top``, in saving order.

    ``names`` are the group's ``weight_names``; they count the variables of a layer whose class
    bncheck does not know (and the extra variables of a renormalising BatchNorm). ``None`` when a
    layer of an unknown class has variables, so that positions cannot be known.
    """
    if generation is Generation.KERAS3:
        weights = _keras3_weights(top, names)
        if weights is None:
            return None
        if not own_trainable(top):
            return [variable for variable, _ in weights]
        return [v for v, trainable in weights if trainable] + [
            v for v, trainable in weights if not trainable
        ]
    parts = _legacy_parts(top, names)
    return None if parts is None else parts[0] + parts[1]


def _legacy_parts(
    layer: LayerConfig, names: Sequence[str]
) -> tuple[list[Variable], list[Variable]] | None:
    """``(trainable_weights, non_trainable_weights)`` of a layer, Keras 1 and 2 style."""
    sublayers = list(children(layer))
    if sublayers:
        trainable: list[Variable] = []
        frozen: list[Variable] = []
        for sublayer in sublayers:
            parts = _legacy_parts(sublayer, names)
            if parts is None:
                return None
            trainable += parts[0]
            frozen += parts[1]
    else:
        own = own_variables(layer, names)
        if own is None:
            return None
        trainable = [v for v in own if v.trainable]
        frozen = [v for v in own if not v.trainable]
    return (trainable, frozen) if own_trainable(layer) else ([], trainable + frozen)


def _keras3_weights(layer: LayerConfig, names: Sequence[str]) -> list[tuple[Variable, bool]] | None:
    """A layer's ``weights`` in Keras 3 order, each with its variable's ``trainable`` flag."""
    sublayers = list(children(layer))
    if not sublayers:
        own = own_variables(layer, names)
        if own is None:
            return None
        return [(v, v.trainable and own_trainable(layer)) for v in own]
    weights: list[tuple[Variable, bool]] = []
    for sublayer in sublayers:
        found = _keras3_weights(sublayer, names)
        if found is None:
            return None
        weights += found
    return weights


def own_variables(layer: LayerConfig, names: Sequence[str]) -> list[Variable] | None:
    """The variables a layer creates, in creation order; ``None`` when that is unknown."""
    config = layer.config
    if layer.class_name in BN_CLASSES:
        variables = [
            Variable(layer.path, role, trainable=True)
            for role, present in (("gamma", config.get("scale")), ("beta", config.get("center")))
            if present is not False
        ]
        variables += [
            Variable(layer.path, "moving_mean", trainable=False),
            Variable(layer.path, "moving_variance", trainable=False),
        ]
        if renorm(layer):
            extra = sum(
                1 for name in names if split_name(name)[1] in RENORM_LEAVES and owns(layer, name)
            )
            if not extra:
                return None
            variables += [Variable(layer.path, None, trainable=False)] * extra
        return variables
    count = _weight_count(layer)
    if count is None:
        # A class bncheck does not know: without variables named after it, it has none.
        return [] if not any(owns(layer, name) for name in names) else None
    return [Variable(layer.path, None, trainable=True)] * count


def _weight_count(layer: LayerConfig) -> int | None:
    """How many (all trainable) variables a built-in layer creates, from its configuration."""
    config = layer.config
    # Keras 2 and later say ``use_bias``, Keras 1 ``bias``.
    bias = int(config.get("use_bias", config.get("bias", True)) is not False)
    if layer.class_name in _KERNEL_AND_BIAS:
        return 1 + bias
    if layer.class_name in _TWO_KERNELS_AND_BIAS:
        return 2 + bias
    if layer.class_name in ("Embedding", "PReLU"):
        return 1
    if layer.class_name == "LayerNormalization":
        return int(config.get("center", True) is not False) + int(
            config.get("scale", True) is not False
        )
    return None


def owns(layer: LayerConfig, name: str) -> bool:
    """Whether a weight name is scoped by the layer's name (or its wrapper's), possibly made
    unique by TensorFlow (``bn_1_1/gamma:0`` for layer ``bn_1``)."""
    return any(
        part == scope or is_uniquified(part, scope)
        for part in name_parts(name)
        for scope in layer.variable_scopes
    )


def name_parts(name: str) -> tuple[str, ...]:
    """The scope components of a weight name; for a Keras 1 name (``bn_1_gamma``), its owner."""
    scope, leaf = split_name(name)
    if scope:
        return scope
    keras1 = keras1_name(leaf)
    return () if keras1 is None else (keras1[0],)


def subtree(layer: LayerConfig) -> Iterator[LayerConfig]:
    """The layer and every layer inside it, depth first."""
    yield layer
    for child in children(layer):
        yield from subtree(child)
