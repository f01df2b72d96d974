"""Recognise BatchNorm variables by name: ``scope/gamma:0``, ``conv1/BatchNorm/moving_mean``.

Keras 2 ``.h5`` files, weights-only files and TensorFlow checkpoints all name each variable by a
scope and a leaf. A scope holding a moving mean and a moving variance is a BatchNorm layer, whatever
the layer is called (``BN0``, ``conv1-BN``, ``bn_Conv1``) and whichever framework wrote it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

#: Leaf names of BatchNorm variables, mapped to the array they hold. ``moving_var`` and
#: ``scale``/``pop_mean``/``pop_var`` are the spellings of hand-written TF1 layers (the latter
#: those of a widely copied tutorial layer); ``scale`` counts only beside moving statistics or
#: in a scope named like a BatchNorm, as ``gamma`` does.
LEAF_ROLES = {
    "gamma": "gamma",
    "scale": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "pop_mean": "moving_mean",
    "moving_variance": "moving_variance",
    "moving_var": "moving_variance",
    "pop_var": "moving_variance",
}

_OUTPUT_SUFFIX = re.compile(r":\d+$")

#: Keras 1 named a layer's variables ``<layer>_<weight>`` without a scope
#: (``batchnormalization_1_running_std``); TensorFlow may append ``_1`` to make a name unique.
_KERAS1_NAME = re.compile(
    r"^(?P<owner>.+)_(?P<weight>gamma|beta|running_mean|running_std)(?:_\d+)?$"
)

#: Keras 1 BatchNormalization weights, mapped to the Keras 2 leaf names Keras 2 loads them as.
#: ``running_std`` held the moving *variance* from Keras 1.0.6 on (``K.moving_average_update``
#: of the batch variance, used as a variance by ``K.batch_normalization``); Keras 2's loader puts
#: it into ``moving_variance`` unchanged.
KERAS1_LEAVES = {
    "gamma": "gamma",
    "beta": "beta",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
}


def split_name(name: str) -> tuple[tuple[str, ...], str]:
    """``"a/b/gamma:0"`` -> ``(("a", "b"), "gamma")``."""
    parts = [p for p in _OUTPUT_SUFFIX.sub("", name).split("/") if p]
    if not parts:
        return (), ""
    return tuple(parts[:-1]), parts[-1]


def keras1_name(leaf: str) -> tuple[str, str] | None:
    """``"batchnormalization_1_running_std"`` -> ``("batchnormalization_1", "moving_variance")``:
    the owner and the Keras 2 leaf of a Keras 1 BatchNormalization weight; ``None`` otherwise."""
    match = _KERAS1_NAME.match(leaf)
    if match is None:
        return None
    return match["owner"], KERAS1_LEAVES[match["weight"]]


def role_of(name: str) -> str | None:
    """The BatchNorm array a weight name holds, in any Keras generation's spelling."""
    _, leaf = split_name(name)
    if leaf in LEAF_ROLES:
        return LEAF_ROLES[leaf]
    keras1 = keras1_name(leaf)
    return None if keras1 is None else keras1[1]


def is_uniquified(scope: str, name: str) -> bool:
    """Whether ``scope`` is ``name`` made unique by TensorFlow (``bn_1`` -> ``bn_1_1``): graph-mode
    Keras entered the layer's name scope while the graph already had one of that name."""
    return scope.startswith(f"{name}_") and scope[len(name) + 1 :].isdigit()


@dataclass
class VariableScope:
    """The BatchNorm variables found under one scope, by role, with the key to read each."""

    scope: tuple[str, ...]
    keys: dict[str, str] = field(default_factory=dict)
    """Role (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``) -> the variable's key."""

    @property
    def has_moving_stats(self) -> bool:
        return "moving_mean" in self.keys and "moving_variance" in self.keys

    @property
    def is_batchnorm(self) -> bool:
        """A moving mean or variance marks BatchNorm; gamma/beta alone could be LayerNorm."""
        return "moving_mean" in self.keys or "moving_variance" in self.keys


def group_by_scope(entries: Iterable[tuple[tuple[str, ...], str, str]]) -> list[VariableScope]:
    """Group ``(scope, leaf, key)`` entries into scopes holding BatchNorm-named variables.

    Scopes keep the order in which they first appear. The first spelling of a role wins.
    """
    scopes: dict[tuple[str, ...], VariableScope] = {}
    for scope, leaf, key in entries:
        role = LEAF_ROLES.get(leaf)
        if role is None or not scope:
            continue
        found = scopes.setdefault(scope, VariableScope(scope))
        found.keys.setdefault(role, key)
    return list(scopes.values())


def collapse_repeats(parts: Iterable[str]) -> tuple[str, ...]:
    """Drop an element equal to the one before it: legacy ``.h5`` files repeat the layer name
    as group and weight scope (``bn_a/bn_a/gamma:0``)."""
    out: list[str] = []
    for part in parts:
        if not out or out[-1] != part:
            out.append(part)
    return tuple(out)
