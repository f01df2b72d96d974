"""Find BatchNorm layers among a TensorFlow checkpoint's variables, by name or by owner.

A TF1 ``Saver`` checkpoint is keyed by variable name (``conv1/BatchNorm/moving_mean``). A TF2
object-based checkpoint is keyed by object-graph path
(``model/layer_with_weights-1/moving_mean/.ATTRIBUTES/VARIABLE_VALUE``) and its object graph also
records each variable's own name (``bn1/moving_mean``; Keras 3: ``inner/bn/moving_mean``). The own
names are preferred: object-graph paths only say which object owns a variable, and Keras 3 may
reach a layer's gamma first through its optimizer (``model/optimizer/_trainable_variables/5``).

Nothing here imports TensorFlow: the object graph is read through its protobuf fields only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from bncheck.errors import ModelReadError
from bncheck.model import ARRAY_NAMES, CheckpointGroup
from bncheck.readers.tensorflow.varnames import (
    LEAF_ROLES,
    VariableScope,
    group_by_scope,
    split_name,
)
from bncheck.records import record

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
VARIABLE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
#: Optimizer slots of legacy tf.keras optimizers hang below the variable they belong to.
_SLOT_MARKER = "/.OPTIMIZER_SLOT/"

#: A scope named like a BatchNorm layer: ``bn1``, ``conv1_bn``, ``BN0``, ``conv1-BN``, ``bn_Conv1``,
#: ``BatchNorm``, ``batch_normalization_3``. Only needed for scopes that lost their moving
#: statistics: gamma and beta alone could be a LayerNormalization.
_BATCHNORM_NAME = re.compile(
    r"(?:^|[^a-z])(?:bn|batch_?norm(?:alization)?)(?:_?v?\d+)?(?:$|[^a-z])", re.IGNORECASE
)
_DIGITS = re.compile(r"(\d+)")
#: Most nodes, children and attributes, all together, of an object graph bncheck walks: a few
#: per variable of the largest models.
MAX_GRAPH_ITEMS = 1 << 20

BY_KERAS_METADATA = "keras metadata"
BY_VARIABLE_NAMES = "variable names"
BY_OBJECT_GRAPH = "object graph"
BY_NAME_SCOPE = "name scope"


def looks_like_batchnorm(scope: str) -> bool:
    """Whether the last element of a scope is named like a BatchNorm layer."""
    return bool(_BATCHNORM_NAME.search(scope.rsplit("/", 1)[-1]))


def natural_key(text: str) -> tuple[Any, ...]:
    """Sort ``conv2`` before ``conv10``."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(text)))


def name_scope_groups(shapes: Mapping[str, Sequence[int]]) -> list[CheckpointGroup]:
    """BatchNorm groups of a name-based checkpoint, whose keys are the variables' names."""
    keys = sorted(shapes, key=natural_key)
    scopes = group_by_scope((*split_name(key), key) for key in keys)
    return [
        _group(scope, shapes, BY_NAME_SCOPE)
        for scope in scopes
        if _is_batchnorm(scope, [_join(scope.scope)])
    ]


@record
class GraphVariable:
    """A variable of an object-based checkpoint."""

    key: str
    """Its checkpoint key, ``<object path>/.ATTRIBUTES/VARIABLE_VALUE``."""
    name: str
    """Its own name when saved (the object graph's ``full_name``), e.g. ``bn1/gamma``."""

    @property
    def object_path(self) -> str:
        return self.key.removesuffix(VARIABLE_SUFFIX)


def graph_variables(graph: Any, shapes: Mapping[str, Sequence[int]]) -> list[GraphVariable]:
    """Every variable of a ``TrackableObjectGraph``, depth first from the root, children in
    tracking order: the order in which a model holds its layers."""
    variables = []
    for node_id in depth_first(graph):
        for attribute in graph.nodes[node_id].attributes:
            key = attribute.checkpoint_key
            if attribute.name == "VARIABLE_VALUE" and key in shapes and _SLOT_MARKER not in key:
                variables.append(GraphVariable(key, attribute.full_name))
    return variables


def check_graph_size(graph: Any, what: str) -> None:
    """Refuse an object graph (``TrackableObjectGraph`` or ``SavedObjectGraph``) of more nodes,
    children and attributes than ``MAX_GRAPH_ITEMS``, before anything walks it."""
    nodes = graph.nodes
    items = len(nodes)
    has_attributes = items > 0 and hasattr(nodes[0], "attributes")
    for node in nodes:
        if items > MAX_GRAPH_ITEMS:
            break
        items += len(node.children) + (len(node.attributes) if has_attributes else 0)
    if items > MAX_GRAPH_ITEMS:
        raise ModelReadError(
            f"{what} holds more than {MAX_GRAPH_ITEMS} nodes, children and attributes"
        )


def depth_first(graph: Any) -> Iterator[int]:
    """Node ids reachable from the root, each once, in depth-first pre-order."""
    nodes = graph.nodes
    count = len(nodes)
    seen = bytearray(count)
    stack = [0] if count else []
    while stack:
        node_id = stack.pop()
        if seen[node_id]:
            continue
        seen[node_id] = 1
        yield node_id
        children = [child.node_id for child in nodes[node_id].children]
        if children and not 0 <= min(children) <= max(children) < count:
            raise ModelReadError("the checkpoint's object graph refers to a missing node")
        stack.extend(reversed(children))


def resolve_node(
    graph: Any, local_names: Iterable[str], children_by_name: dict[int, dict[str, int]]
) -> int | None:
    """The node reached from the root by following children by name; ``None`` if none is.
    ``children_by_name`` keeps each node's children by name once looked at, so that many
    lookups through one node cost its children once."""
    node_id = 0
    for local_name in local_names:
        if node_id not in children_by_name:
            named: dict[str, int] = {}
            for child in graph.nodes[node_id].children:
                named.setdefault(child.local_name, child.node_id)
            children_by_name[node_id] = named
        node_id = children_by_name[node_id].get(local_name, -1)
        if not 0 <= node_id < len(graph.nodes):
            return None
    return node_id


def variable_children(graph: Any, node_id: int) -> dict[str, str]:
    """Array name -> checkpoint key of an object's BatchNorm-named variables."""
    keys: dict[str, str] = {}
    for child in graph.nodes[node_id].children:
        role = LEAF_ROLES.get(child.local_name)
        if role is None or not 0 <= child.node_id < len(graph.nodes):
            continue
        for attribute in graph.nodes[child.node_id].attributes:
            if attribute.name == "VARIABLE_VALUE":
                keys.setdefault(role, attribute.checkpoint_key)
    return keys


def object_graph_groups(
    variables: Sequence[GraphVariable], shapes: Mapping[str, Sequence[int]]
) -> list[CheckpointGroup]:
    """BatchNorm groups of an object-based checkpoint: by the variables' own names when every
    BatchNorm-named variable has a scoped name, else by the object that owns them."""
    by_name = {v.key: split_name(v.name) for v in variables}
    by_owner = {v.key: split_name(v.object_path) for v in variables}
    relevant = [
        v.key
        for v in variables
        if by_name[v.key][1] in LEAF_ROLES or by_owner[v.key][1] in LEAF_ROLES
    ]
    if all(by_name[key][0] and by_name[key][1] in LEAF_ROLES for key in relevant):
        scopes = _without_copies(group_by_scope((*by_name[v.key], v.key) for v in variables))
        other_names, found_by = by_owner, BY_VARIABLE_NAMES
    else:
        scopes = group_by_scope((*by_owner[v.key], v.key) for v in variables)
        other_names, found_by = by_name, BY_OBJECT_GRAPH
    groups = []
    for scope in scopes:
        aliases = _aliases(scope, other_names)
        if _is_batchnorm(scope, [_join(scope.scope), *aliases]):
            groups.append(_group(scope, shapes, found_by, aliases))
    return groups


def _without_copies(scopes: list[VariableScope]) -> list[VariableScope]:
    """Drop optimizer slots named after the variable they shadow (tf.keras: ``Adam/m/bn1/gamma``
    beside ``bn1/gamma``): a scope without moving statistics that ends with another scope."""
    names = {scope.scope for scope in scopes}
    hashed = {_suffix_hashes(scope.scope)[0] for scope in scopes if scope.scope}
    kept = []
    for scope in scopes:
        # Each proper suffix's hash, built from the end in one pass: a scope costs its depth,
        # and only a matching hash costs a comparison.
        shadows = any(
            suffix in hashed and scope.scope[-suffix[0] :] in names
            for suffix in _suffix_hashes(scope.scope)[1:]
        )
        if scope.is_batchnorm or not shadows:
            kept.append(scope)
    return kept


def _suffix_hashes(scope: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(length, hash)`` of every suffix of ``scope``, longest first."""
    hashes = []
    running = 0
    for length, part in enumerate(reversed(scope), start=1):
        running = hash((part, running))
        hashes.append((length, running))
    return hashes[::-1]


def _aliases(scope: VariableScope, names: Mapping[str, tuple[tuple[str, ...], str]]) -> list[str]:
    """The other scopes a group's variables go by, where their leaf still names the array."""
    aliases: list[str] = []
    for key in scope.keys.values():
        other_scope, leaf = names[key]
        alias = _join(other_scope)
        if (
            leaf in LEAF_ROLES
            and other_scope
            and alias != _join(scope.scope)
            and alias not in aliases
        ):
            aliases.append(alias)
    return aliases


def _is_batchnorm(scope: VariableScope, names: Iterable[str]) -> bool:
    if scope.is_batchnorm:
        return True
    return ("gamma" in scope.keys or "beta" in scope.keys) and any(
        looks_like_batchnorm(name) for name in names
    )


def group_from_keys(
    path: str,
    keys: Mapping[str, str],
    shapes: Mapping[str, Sequence[int]],
    found_by: str,
    aliases: Sequence[str] = (),
) -> CheckpointGroup:
    ordered = {name: keys[name] for name in ARRAY_NAMES if name in keys}
    return CheckpointGroup(
        path=path,
        keys=ordered,
        shapes={name: tuple(int(d) for d in shapes[key]) for name, key in ordered.items()},
        found_by=found_by,
        aliases=tuple(aliases),
    )


def _group(
    scope: VariableScope,
    shapes: Mapping[str, Sequence[int]],
    found_by: str,
    aliases: Sequence[str] = (),
) -> CheckpointGroup:
    return group_from_keys(_join(scope.scope), scope.keys, shapes, found_by, aliases)


def _join(scope: Iterable[str]) -> str:
    return "/".join(scope)
