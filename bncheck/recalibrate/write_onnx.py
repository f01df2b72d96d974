"""Writing new statistics into an ONNX model (``.onnx``).

Each ``BatchNormalization`` node's ``input_mean`` and ``input_var`` are initializers of the main
graph (directly or through ``Identity`` nodes, as the reader finds them). Their values are
overwritten where they lie in the file, in ``raw_data`` or a packed ``float_data`` or
``double_data``: the same type and shape take the same bytes, so the protocol buffer keeps its
layout and every other byte of the file stays as it was.

Refused, with one line naming the layer: statistics computed in the graph or held by a
``Constant`` node, an initializer kept in an external data file (a file outside OUT, which
bncheck never writes), one that another node also reads (another layer, or anything but this
node), an initializer named twice, and values stored as varints (16-bit floats in
``int32_data``), whose length would change.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bncheck.readers.onnx import onnx_graph, onnx_proto
from bncheck.recalibrate.splice import (
    LENGTH_DELIMITED,
    Patch,
    Statistics,
    Stored,
    check_layers,
    check_read_back,
    encode,
    wire_fields,
    write_patched,
)
from bncheck.recalibrate.write import WriteError

#: Field numbers of ``onnx.proto``: ModelProto.graph, GraphProto.initializer, TensorProto's
#: float_data, name, raw_data and double_data.
_GRAPH, _INITIALIZER = 7, 5
_FLOAT_DATA, _NAME, _RAW_DATA, _DOUBLE_DATA = 4, 8, 9, 10
#: The typed field each element type may keep its values in, packed, at a fixed width.
_TYPED_FIELDS = {"float32": _FLOAT_DATA, "float64": _DOUBLE_DATA}
#: The inputs of a BatchNormalization node that hold its statistics, by the reader's names.
_SLOTS = {3: "input_mean", 4: "input_var"}


def write(source: str, target: str, statistics: Statistics) -> None:
    """Write ``target`` as the ONNX model ``source`` with new ``input_mean`` and ``input_var``."""
    written: dict[str, tuple[Stored, Stored]] = {}

    def patches() -> list[Patch]:
        model = onnx_graph.load(source)
        graph = model.graph
        values = onnx_graph.Values(graph, Path(source).parent.resolve())
        nodes = {bn.path: bn for bn in onnx_graph.batchnorm_nodes(graph)}
        check_layers(statistics, list(nodes), source)
        uses = _uses(graph, values)
        spans = _initializer_spans(source, model)
        indices: dict[str, list[int]] = {}
        for index, tensor in enumerate(graph.initializer):
            indices.setdefault(tensor.name, []).append(index)
        outputs = {values.stored_name(output.name) for output in graph.output}
        found = []
        for path, arrays in statistics.items():
            bn = nodes[path]
            stored = []
            for (slot, role), array in zip(_SLOTS.items(), arrays, strict=True):
                what = f"{path}: {role}"
                if len(bn.node.input) <= slot:
                    raise WriteError(f"{what} is missing from the BatchNormalization node")
                name = values.stored_name(bn.node.input[slot])
                if name is None:
                    raise WriteError(f"{what} is computed in the graph, not stored; not written")
                if name not in indices:
                    raise WriteError(
                        f"{what} is held by a Constant node; bncheck writes initializers only"
                    )
                if len(indices[name]) > 1:
                    raise WriteError(
                        f"{what}: the graph has {len(indices[name])} initializers named {name!r}"
                    )
                if uses.get(name) != [(bn.index, slot)] or name in outputs:
                    raise WriteError(
                        f"{what} ({name!r}) is shared with another input or output of the graph; "
                        "writing it would change them too"
                    )
                index = indices[name][0]
                patch, dtype = _patch(graph.initializer[index], spans[index], array, what, source)
                stored.append(Stored(patch.data, dtype))
                found.append(patch)
            written[path] = (stored[0], stored[1])
        return found

    def check(copy: str) -> None:
        check_read_back(onnx_graph.read(copy).layers, written)

    write_patched(source, target, patches, check)


def _uses(graph: Any, values: onnx_graph.Values) -> dict[str, list[tuple[int, int]]]:
    """Who reads each stored tensor: ``(node index, input slot)`` for the main graph's nodes, and
    ``(-1, -1)`` for any node of a subgraph. The Identity nodes the reader sees through are not
    uses: their own readers are."""
    uses: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(graph.node):
        aliasing = node.output and node.output[0] in values.aliases
        if node.op_type == "Identity" and aliasing:
            continue
        for slot, name in enumerate(node.input):
            stored = values.stored_name(name)
            if stored is not None:
                uses.setdefault(stored, []).append((index, slot))
        for name in _subgraph_inputs(node):
            stored = values.stored_name(name)
            if stored is not None:
                uses.setdefault(stored, []).append((-1, -1))
    return uses


def _subgraph_inputs(node: Any) -> list[str]:
    """Every name the nodes of a node's subgraphs (If, Loop, Scan bodies) read, at any depth."""
    names: list[str] = []
    pending = [graph for attribute in node.attribute for graph in _graphs(attribute)]
    while pending:
        graph = pending.pop()
        for inner in graph.node:
            names.extend(inner.input)
            pending.extend(g for attribute in inner.attribute for g in _graphs(attribute))
        names.extend(output.name for output in graph.output)
    return names


def _graphs(attribute: Any) -> list[Any]:
    return ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)


#: Fields a message may hold beyond the repeated ones the parsed model counts: its scalars.
_SCALAR_FIELDS = 64


def _repeated(message: Any, names: tuple[str, ...]) -> int:
    """How many entries the parsed ``message`` holds in its repeated fields ``names``."""
    return sum(len(getattr(message, name, ())) for name in names)


def _initializer_spans(source: str, model: Any) -> list[tuple[int, int]]:
    """Where each initializer of the main graph lies in the file, in the graph's order."""
    graph_proto = model.graph
    count = len(graph_proto.initializer)
    with open(source, "rb") as handle:
        data = handle.read()
    # bncheck's message classes know the fields it reads; any other counts as a scalar.
    model_fields = _SCALAR_FIELDS + _repeated(
        model, ("opset_import", "metadata_props", "functions", "training_info")
    )
    graph_fields = _SCALAR_FIELDS + _repeated(
        graph_proto,
        (
            "node",
            "initializer",
            "sparse_initializer",
            "input",
            "output",
            "value_info",
            "quantization_annotation",
        ),
    )
    graphs = [f for f in wire_fields(data, 0, len(data), model_fields) if f.number == _GRAPH]
    if len(graphs) != 1 or graphs[0].wire_type != LENGTH_DELIMITED:
        raise WriteError("the model's graph is not written as one message; not written")
    graph = graphs[0]
    spans = [
        (f.start, f.end)
        for f in wire_fields(data, graph.start, graph.end, graph_fields)
        if f.number == _INITIALIZER and f.wire_type == LENGTH_DELIMITED
    ]
    if len(spans) != count:
        raise WriteError("the graph's initializers are not where the model says; not written")
    return spans


def _patch(
    tensor: Any, span: tuple[int, int], values: Any, what: str, source: str
) -> tuple[Patch, str]:
    """The bytes that hold an initializer's values, replaced by ``values`` in its type."""
    if tensor.data_location == onnx_proto.EXTERNAL:
        raise WriteError(
            f"{what} is kept in an external data file beside {os.path.basename(source)}; "
            "bncheck writes OUT only, never another file"
        )
    dtype = onnx_proto.ELEMENT_TYPES.get(tensor.data_type, str(tensor.data_type))
    count = 1
    for size in tensor.dims:
        count *= size
    with open(source, "rb") as handle:
        handle.seek(span[0])
        message = handle.read(span[1] - span[0])
    repeated = _repeated(
        tensor,
        (
            "dims",
            "float_data",
            "int32_data",
            "string_data",
            "int64_data",
            "double_data",
            "uint64_data",
            "external_data",
        ),
    )
    fields = wire_fields(message, 0, len(message), _SCALAR_FIELDS + repeated)
    names = [f for f in fields if f.number == _NAME]
    if [bytes(message[f.start : f.end]) for f in names] != [tensor.name.encode()]:
        raise WriteError(f"{what}: the initializer in the file is not the one read; not written")
    number = _RAW_DATA if tensor.HasField("raw_data") else _TYPED_FIELDS.get(dtype)
    if number is None:
        raise WriteError(
            f"{what} keeps its {dtype} values as varints, whose length would change; not written"
        )
    holding = [f for f in fields if f.number == number]
    if len(holding) != 1 or holding[0].wire_type != LENGTH_DELIMITED:
        raise WriteError(f"{what}: its values are not stored as one packed field; not written")
    data = encode(values, dtype, count, what)
    field = holding[0]
    if field.end - field.start != len(data):
        raise WriteError(
            f"{what} holds {field.end - field.start} bytes, its shape needs {len(data)}"
        )
    return Patch(span[0] + field.start, data, what), dtype
