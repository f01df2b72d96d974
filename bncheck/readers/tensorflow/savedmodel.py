"""SavedModel directories: tf.keras ``model.save("dir")``, Keras 3 ``model.export("dir")``,
``tf.saved_model.save`` of any ``tf.Module``.

The variables are an object-based checkpoint in ``variables/variables.*``. BatchNorm layers are
found, in order of preference, from the Keras metadata of tf.keras SavedModels (class, nested path
and configuration of each layer; kept in ``keras_metadata.pb``, or by TensorFlow 2.4 and older
inside ``saved_model.pb``), then like in any checkpoint: by the variables' own names (Keras 3
export: ``conv1_bn/moving_mean``), by object-graph paths, or by TF1 name scopes. Only protocol
buffers and the BatchNorm variables are read: the graph is never loaded or run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bncheck.errors import ModelReadError
from bncheck.model import CheckpointContents, CheckpointGroup, ModelDescription
from bncheck.readers.codecs.h5util import MAX_CONFIG_BYTES, parse_json_config
from bncheck.readers.keras.keras_config import (
    BN_CLASSES,
    MODEL_CLASSES,
    LayerConfig,
    bn_settings,
    walk_layers,
)
from bncheck.readers.tensorflow import tf_graph
from bncheck.readers.tensorflow.checkpoint import (
    MAX_OBJECT_GRAPH_BYTES,
    CheckpointFile,
    LayerSettings,
    describe,
    variable_groups,
)
from bncheck.readers.tensorflow.checkpoint_layout import (
    BY_KERAS_METADATA,
    MAX_GRAPH_ITEMS,
    check_graph_size,
    depth_first,
    group_from_keys,
    resolve_node,
    variable_children,
)
from bncheck.readers.tensorflow.tensor_bundle import INDEX_SUFFIX
from bncheck.readers.tensorflow.tf_protos import WireError, length_delimited, message_class
from bncheck.records import record

KERAS_METADATA = "keras_metadata.pb"
VARIABLES_PREFIX = ("variables", "variables")
_KERAS_IDENTIFIER = "_tf_keras"
#: Deepest Keras object read: a layer inside nested models, a few levels down.
MAX_KERAS_DEPTH = 64
#: Most fields of a SavedModel or a meta graph looked through to find the object graph.
_MAX_OUTER_FIELDS = 1 << 16
NO_VARIABLES_NOTE = (
    "the SavedModel's variables/ folder holds no variables (as a frozen graph's), so no "
    "BatchNorm statistics to check"
)


@record
class KerasNode:
    """One Keras object of a tf.keras SavedModel, as its metadata describes it."""

    path: tuple[str, ...]
    """Local names from the root object, e.g. ``("layer_with_weights-2", "layer-0")``."""
    metadata: Mapping[str, Any]
    """The object's metadata: ``class_name``, ``name``, ``trainable``, ``config``, ..."""


def _refuse_outside(root: Path, prefix: Path) -> None:
    """Every file the SavedModel is read from lies in its folder once links are resolved, as a
    checkpoint's must: a folder from elsewhere may not make bncheck read (and print the
    statistics of) files beside it."""
    folder = root.resolve()
    files = [root / name for name in ("saved_model.pb", "saved_model.pbtxt", KERAS_METADATA)]
    files += [prefix.parent, Path(f"{prefix}{INDEX_SUFFIX}")]
    files += prefix.parent.glob(f"{prefix.name}.data-*")
    for file in files:
        if (file.exists() or file.is_symlink()) and not file.resolve().is_relative_to(folder):
            raise ModelReadError(
                f"{file.relative_to(root)} leads outside the SavedModel's folder {root}: refused"
            )


def read(path: str) -> ModelDescription:
    root = Path(path)
    prefix = root.joinpath(*VARIABLES_PREFIX)
    if not prefix.parent.is_dir():
        # Every SavedModel writer makes the folder, even for a model without variables.
        raise ModelReadError(
            f"the SavedModel has no {prefix.parent.name}/ folder: its variables are missing"
        )
    _refuse_outside(root, prefix)
    nodes, notes = keras_nodes(root)
    if not Path(f"{prefix}{INDEX_SUFFIX}").is_file():
        if any(prefix.parent.glob(f"{prefix.name}.data-*")):
            raise ModelReadError(f"the SavedModel's variables have no index ({prefix.name}.index)")
        return ModelDescription(
            path=path,
            format="savedmodel",
            layers=(),
            notes=(*notes, NO_VARIABLES_NOTE),
            checkpoint=CheckpointContents(prefix=str(prefix), groups=()),
        )
    checkpoint = CheckpointFile(str(prefix))
    graph = checkpoint.object_graph()
    groups: list[CheckpointGroup] = []
    configured: dict[str, LayerSettings] = {}
    if nodes and graph is not None:
        for group, settings in _metadata_groups(nodes, graph, checkpoint.shapes):
            groups.append(group)
            configured[group.path] = settings
    # BatchNorm written by hand inside custom layers has no Keras class: find it by its variables.
    claimed = {key for group in groups for key in group.keys.values()}
    groups += [
        group
        for group in variable_groups(checkpoint)
        if not claimed.intersection(group.keys.values())
    ]
    description = describe(path, "savedmodel", checkpoint, groups, configured, notes)
    moments = tf_graph.batch_moments(root / "saved_model.pb", saved_model=True)
    return replace(description, batch_moments=moments)


def keras_nodes(root: Path) -> tuple[list[KerasNode], list[str]]:
    """The Keras objects of a tf.keras SavedModel (none for other SavedModels), and notes."""
    metadata_file = root / KERAS_METADATA
    if metadata_file.is_file():
        return list(_nodes_from_metadata_file(metadata_file)), []
    graph_file = root / "saved_model.pb"
    if not graph_file.is_file():
        graph_file = root / "saved_model.pbtxt"
    # Large graphs are frozen constants, not tf.keras SavedModels of TensorFlow <= 2.4; a text
    # graph is parsed whole, so it is held to the object graph's own size.
    limit = MAX_CONFIG_BYTES if graph_file.suffix == ".pb" else MAX_OBJECT_GRAPH_BYTES
    if graph_file.stat().st_size > limit:
        return [], [
            f"{graph_file.name} is larger than {limit >> 20} MiB: not searched for Keras metadata"
        ]
    return list(_nodes_from_object_graph(_saved_object_graph(graph_file))), []


def _nodes_from_metadata_file(metadata_file: Path) -> Iterator[KerasNode]:
    from google.protobuf.message import DecodeError

    data = _read_bytes(metadata_file)
    saved = message_class("SavedMetadata")()
    try:
        # Counted before parsing: a parsed node costs far more than its bytes.
        length_delimited(data, 1, MAX_GRAPH_ITEMS)
        saved.ParseFromString(data)
    except (DecodeError, WireError) as exc:
        raise ModelReadError(f"{KERAS_METADATA} is corrupt ({exc})") from None
    for node in saved.nodes:
        if node.node_path.count(".") > MAX_KERAS_DEPTH:
            raise ModelReadError(
                f"{KERAS_METADATA} nests a node more than {MAX_KERAS_DEPTH} objects deep"
            )
        path = node.node_path.split(".")
        if path[0] != "root":
            raise ModelReadError(f"{KERAS_METADATA} has a node path {node.node_path!r}")
        yield KerasNode(
            tuple(path[1:]),
            parse_json_config(node.metadata, f"the Keras metadata of {node.node_path}"),
        )


def _nodes_from_object_graph(graph: Any | None) -> Iterator[KerasNode]:
    if graph is None:
        return
    parents = _parents(graph)
    for node_id, node in enumerate(graph.nodes):
        user_object = node.user_object if node.HasField("user_object") else None
        if user_object is None or not user_object.identifier.startswith(_KERAS_IDENTIFIER):
            continue
        path = _first_path(parents, node_id)
        if user_object.metadata and path is not None:
            yield KerasNode(
                path,
                parse_json_config(user_object.metadata, f"the Keras metadata of node {node_id}"),
            )


def _parents(graph: Any) -> dict[int, tuple[int, str]]:
    """Breadth-first: each node's parent and local name on the shortest path from the root,
    the path its variables' checkpoint keys follow. Parents, not paths: a chain of nodes would
    make the paths quadratic."""
    parents: dict[int, tuple[int, str]] = {0: (-1, "")} if graph.nodes else {}
    queue = [0] if graph.nodes else []
    for node_id in queue:
        for child in graph.nodes[node_id].children:
            if child.node_id not in parents and 0 <= child.node_id < len(graph.nodes):
                parents[child.node_id] = (node_id, child.local_name)
                queue.append(child.node_id)
    return parents


def _first_path(parents: Mapping[int, tuple[int, str]], node_id: int) -> tuple[str, ...] | None:
    """The local names from the root to a node; ``None`` if the root does not reach it."""
    if node_id not in parents:
        return None
    names: list[str] = []
    while node_id:
        if len(names) >= MAX_KERAS_DEPTH:
            raise ModelReadError(
                f"the SavedModel's object graph nests a Keras object more than "
                f"{MAX_KERAS_DEPTH} objects deep"
            )
        node_id, local_name = parents[node_id]
        names.append(local_name)
    return tuple(reversed(names))


def _saved_object_graph(graph_file: Path) -> Any | None:
    """The object graph of a SavedModel's first meta graph; ``None`` if it has none. Its size
    is checked before it is parsed, and the rest of the file is never parsed."""
    from google.protobuf import text_format
    from google.protobuf.message import DecodeError

    graph = message_class("SavedObjectGraph")()
    try:
        if graph_file.suffix == ".pb":
            data = graph_file.read_bytes()
            meta_graphs = length_delimited(data, 2, _MAX_OUTER_FIELDS)
            if not meta_graphs:
                return None
            found = length_delimited(meta_graphs[0], 7, _MAX_OUTER_FIELDS)
            if not found:
                return None
            _check_object_graph_bytes(graph_file, len(found[-1]))
            graph.ParseFromString(found[-1])
        else:
            _check_object_graph_bytes(graph_file, graph_file.stat().st_size)
            # Only the object graph's Keras objects are defined (tf_protos): skip the rest.
            saved_model = message_class("SavedModel")()
            text_format.Parse(
                graph_file.read_text(encoding="utf-8"), saved_model, allow_unknown_field=True
            )
            if not saved_model.meta_graphs:
                return None
            graph = saved_model.meta_graphs[0].object_graph_def
    except (DecodeError, WireError, text_format.ParseError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())
        raise ModelReadError(f"{graph_file.name} is corrupt ({reason})") from None
    check_graph_size(graph, f"the object graph of {graph_file.name}")
    return graph


def _check_object_graph_bytes(graph_file: Path, size: int) -> None:
    if size > MAX_OBJECT_GRAPH_BYTES:
        raise ModelReadError(
            f"the object graph of {graph_file.name} is {size} bytes, more than "
            f"{MAX_OBJECT_GRAPH_BYTES >> 20} MiB"
        )


def _metadata_groups(
    nodes: Sequence[KerasNode], graph: Any, shapes: Mapping[str, Sequence[int]]
) -> list[tuple[CheckpointGroup, LayerSettings]]:
    """The BatchNorm layers the metadata names, in model order (depth first through the object
    graph, as the layers are tracked), each with its variables and configuration."""
    order = {node_id: position for position, node_id in enumerate(depth_first(graph))}
    found = sorted(
        _metadata_layers(nodes, graph, shapes),
        key=lambda item: len(order) if item[0] is None else order.get(item[0], len(order)),
    )
    return [(group, settings) for _, group, settings in found]


def _metadata_layers(
    nodes: Sequence[KerasNode], graph: Any, shapes: Mapping[str, Sequence[int]]
) -> Iterator[tuple[int | None, CheckpointGroup, LayerSettings]]:
    by_path = {node.path: node for node in nodes}
    call_kwargs = _call_kwargs_by_layer(by_path.get(()))
    children_by_name: dict[int, dict[str, int]] = {}
    keys_by_node: dict[int, dict[str, str]] = {}
    for node in nodes:
        class_name = node.metadata.get("class_name")
        if class_name not in BN_CLASSES:
            continue
        chain = [
            by_path[node.path[:i]] for i in range(len(node.path) + 1) if node.path[:i] in by_path
        ]
        names = tuple(_name(ancestor) for ancestor in chain)
        config = node.metadata.get("config")
        layer = LayerConfig(
            name=names[-1],
            class_name=str(class_name),
            config=config if isinstance(config, Mapping) else {},
            path=names,
            saving_path=(),
            trainable=all(
                ancestor.metadata.get("trainable", True) is not False for ancestor in chain
            ),
            call_kwargs=call_kwargs.get(names, ()),
        )
        node_id = resolve_node(graph, node.path, children_by_name)
        keys: dict[str, str] = {}
        if node_id is not None:
            if node_id not in keys_by_node:
                keys_by_node[node_id] = variable_children(graph, node_id)
            keys = keys_by_node[node_id]
        group = group_from_keys("/".join(names), keys, shapes, BY_KERAS_METADATA)
        yield node_id, group, LayerSettings(str(class_name), bn_settings(layer))


def _call_kwargs_by_layer(root: KerasNode | None) -> dict[tuple[str, ...], Any]:
    """Each layer's recorded calls, from the root model's configuration when it is a graph of
    layers (functional or sequential); subclassed models record none."""
    if root is None:
        return {}
    class_name, config = root.metadata.get("class_name"), root.metadata.get("config")
    if class_name not in MODEL_CLASSES or not isinstance(config, Mapping) or "layers" not in config:
        return {}
    return {
        layer.path: layer.call_kwargs
        for layer in walk_layers({"class_name": class_name, "config": config})
    }


def _name(node: KerasNode) -> str:
    name = node.metadata.get("name")
    return name if isinstance(name, str) and name else (node.path[-1] if node.path else "model")


def _read_bytes(path: Path) -> bytes:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelReadError(f"{path.name} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    return path.read_bytes()
