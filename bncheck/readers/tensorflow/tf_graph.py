"""Batch normalisation computed op by op in a TensorFlow graph, found without TensorFlow.

A BatchNorm written by hand (seed 002: ``tf.nn.moments`` and then ``rsqrt(var + eps) * gamma``)
leaves its moments in the graph as ``Mean``, ``SquaredDifference`` and a second ``Mean``. Over
a 4-D (or 5-D) input, with the batch axis among those reduced, this is the work the fused
kernel (``FusedBatchNormV3``) does in one op. The graphs read are a TF1 checkpoint's ``.meta``
(written by ``Saver.save`` by default) and a SavedModel's ``saved_model.pb``, including its
function library, where tf.keras keeps each layer's training-mode call. Keras 3's exported
SavedModels hold inference only: their batch moments are never in the graph.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.model import BatchMoments
from bncheck.readers.tensorflow.tf_protos import WireError, length_delimited, message_class

#: Graphs larger than this are not searched (a frozen graph's constants, not its structure).
MAX_GRAPH_BYTES = 256 << 20
#: Graphs of more nodes than this, functions included, are not searched either: counted on the
#: wire before parsing, since a parsed node costs many times its bytes.
MAX_GRAPH_NODES = 1 << 19
_INT32, _INT64 = 3, 9
#: A traced function's name: tf.keras names a layer's call ``__inference_<layer>_layer_call_fn_12``
#: (or ``..._layer_call_and_return_conditional_losses_12``); others end in a trace number too.
_LAYER_CALL = re.compile(r"^__inference_(.+?)_layer_call_(?:fn|and_return_conditional_losses)_\d+$")
_TRACED = re.compile(r"^__inference_(.+?)_\d+$")


def batch_moments(graph_file: Path, saved_model: bool) -> tuple[BatchMoments, ...]:
    """Every batch-moments computation over a 4-D or 5-D input in the graph file, in graph
    order; empty when the file is missing, too large or not a graph bncheck can parse (the
    graph is evidence for an advisory rule, never needed to read the variables). Nodes are
    looked up by name, never followed from one to the next: a long chain costs its length."""
    from google.protobuf.message import DecodeError

    try:
        if graph_file.stat().st_size > MAX_GRAPH_BYTES:
            return ()
        data = graph_file.read_bytes()
    except OSError:
        return ()
    try:
        meta_graphs_bytes = length_delimited(data, 2, MAX_GRAPH_NODES) if saved_model else [data]
        if _count_nodes(meta_graphs_bytes) > MAX_GRAPH_NODES:
            return ()
    except WireError:
        return ()
    try:
        if saved_model:
            message = message_class("GraphSavedModel")()
            message.ParseFromString(data)
            meta_graphs = list(message.meta_graphs)
        else:
            meta_graph = message_class("GraphMetaGraphDef")()
            meta_graph.ParseFromString(data)
            meta_graphs = [meta_graph]
    except DecodeError:
        return ()
    found: dict[tuple[str, str], BatchMoments] = {}
    for meta_graph in meta_graphs:
        graph = meta_graph.graph_def
        bodies = [("", graph.node)] + [
            (function.signature.name, function.node_def) for function in graph.library.function
        ]
        for function, nodes in bodies:
            for moments in _moments_in(_function_name(function), nodes):
                found.setdefault((moments.function, moments.scope), moments)
    return tuple(found.values())


def _count_nodes(meta_graphs: Sequence[memoryview | bytes]) -> int:
    """Nodes of the meta graphs' graphs and their functions, counted up to just past
    ``MAX_GRAPH_NODES`` (``GraphDef.node`` 1, ``.library`` 2, ``FunctionDefLibrary.function``
    1, ``FunctionDef.node_def`` 3)."""
    count = 0
    for meta_graph in meta_graphs:
        for graph in length_delimited(meta_graph, 2, MAX_GRAPH_NODES):
            count += len(length_delimited(graph, 1, MAX_GRAPH_NODES - count + 2))
            for library in length_delimited(graph, 2, MAX_GRAPH_NODES):
                for function in length_delimited(library, 1, MAX_GRAPH_NODES):
                    count += len(length_delimited(function, 3, MAX_GRAPH_NODES - count + 2))
                    if count > MAX_GRAPH_NODES:
                        return count
            if count > MAX_GRAPH_NODES:
                return count
    return count


def _moments_in(function: str, nodes: Sequence[Any]) -> Iterator[BatchMoments]:
    by_name = {node.name: node for node in nodes}
    for node in nodes:
        if node.op != "Mean" or len(node.input) < 2:
            continue
        source = by_name.get(_node_name(node.input[0]))
        if source is None or source.op != "SquaredDifference":
            continue  # the variance is the Mean of the squared differences from the mean
        axes = _constant_axes(by_name.get(_node_name(node.input[1])))
        if axes is None or 0 not in axes or len(axes) < 3:
            continue  # not over the batch of a 4-D input: nothing the fused kernel covers
        yield BatchMoments(
            function=function,
            scope=_scope(node.name),
            axes=tuple(axes),
        )


def _function_name(name: str) -> str:
    """What a user recognises in a traced function's name: the layer whose call it is (every
    trace of one call is then one place), else the traced function without its number."""
    call = _LAYER_CALL.match(name)
    if call:
        return f"the call of layer {call.group(1)}"
    traced = _TRACED.match(name)
    return f"function {traced.group(1)}" if traced else (f"function {name}" if name else "")


def _node_name(reference: str) -> str:
    """``moments/mean:output:0`` or ``^dep`` or ``x:1`` -> the node's name."""
    return reference.lstrip("^").split(":", 1)[0]


def _scope(name: str) -> str:
    """``bn1/moments/variance`` -> ``bn1``; ``moments/variance`` -> ``""``."""
    head, _, _ = name.rpartition("/moments/")
    if head:
        return head
    return "" if name.startswith("moments/") else name.rpartition("/")[0]


def _constant_axes(node: Any) -> list[int] | None:
    if node is None or node.op != "Const":
        return None
    for entry in node.attr:
        if entry.key != "value" or not entry.value.HasField("tensor"):
            continue
        tensor = entry.value.tensor
        if tensor.tensor_content:
            dtype = {_INT32: "<i4", _INT64: "<i8"}.get(tensor.dtype)
            if dtype is None or len(tensor.tensor_content) % np.dtype(dtype).itemsize:
                return None
            return [int(axis) for axis in np.frombuffer(tensor.tensor_content, dtype=dtype)]
        values = list(tensor.int_val) or list(tensor.int64_val)
        if not values:
            return None
        # A splatted constant stores one value for its whole shape.
        size = int(np.prod([dim.size for dim in tensor.tensor_shape.dim] or [1]))
        return [int(values[0])] * size if len(values) == 1 and size > 1 else values
    return None
