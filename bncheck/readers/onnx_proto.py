"""The ONNX protocol buffer messages bncheck reads, defined here with ``protobuf`` alone.

The ``onnx`` package would bring the same classes with a C++ extension that takes about 1.6 s to
import; these are built from a field list in milliseconds. The field numbers and types are
``onnx/onnx.proto``'s (syntax proto2). Fields not listed are kept as unknown fields, so a model
parsed and serialised again (as the probe does) loses nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

PACKAGE = "bncheck.onnx"

#: message -> (number, name, type, repeated, message type or None)
_OPTIONAL, _REPEATED = False, True
_MESSAGES: dict[str, list[tuple[int, str, str, bool, str | None]]] = {
    "StringStringEntryProto": [
        (1, "key", "string", _OPTIONAL, None),
        (2, "value", "string", _OPTIONAL, None),
    ],
    "OperatorSetIdProto": [
        (1, "domain", "string", _OPTIONAL, None),
        (2, "version", "int64", _OPTIONAL, None),
    ],
    "Dimension": [
        (1, "dim_value", "int64", _OPTIONAL, None),
        (2, "dim_param", "string", _OPTIONAL, None),
    ],
    "TensorShapeProto": [(1, "dim", "message", _REPEATED, "Dimension")],
    "TensorTypeProto": [
        (1, "elem_type", "int32", _OPTIONAL, None),
        (2, "shape", "message", _OPTIONAL, "TensorShapeProto"),
    ],
    "TypeProto": [(1, "tensor_type", "message", _OPTIONAL, "TensorTypeProto")],
    "ValueInfoProto": [
        (1, "name", "string", _OPTIONAL, None),
        (2, "type", "message", _OPTIONAL, "TypeProto"),
    ],
    "TensorProto": [
        (1, "dims", "int64", _REPEATED, None),
        (2, "data_type", "int32", _OPTIONAL, None),
        (4, "float_data", "float", _REPEATED, None),
        (5, "int32_data", "int32", _REPEATED, None),
        (7, "int64_data", "int64", _REPEATED, None),
        (8, "name", "string", _OPTIONAL, None),
        (9, "raw_data", "bytes", _OPTIONAL, None),
        (10, "double_data", "double", _REPEATED, None),
        (13, "external_data", "message", _REPEATED, "StringStringEntryProto"),
        (14, "data_location", "int32", _OPTIONAL, None),
    ],
    "AttributeProto": [
        (1, "name", "string", _OPTIONAL, None),
        (2, "f", "float", _OPTIONAL, None),
        (3, "i", "int64", _OPTIONAL, None),
        (4, "s", "bytes", _OPTIONAL, None),
        (5, "t", "message", _OPTIONAL, "TensorProto"),
        (7, "floats", "float", _REPEATED, None),
        (8, "ints", "int64", _REPEATED, None),
        # Subgraphs (If, Loop, Scan bodies) and tensors that may keep their data elsewhere.
        (6, "g", "message", _OPTIONAL, "GraphProto"),
        (10, "tensors", "message", _REPEATED, "TensorProto"),
        (11, "graphs", "message", _REPEATED, "GraphProto"),
        (20, "type", "int32", _OPTIONAL, None),
        (22, "sparse_tensor", "message", _OPTIONAL, "SparseTensorProto"),
        (23, "sparse_tensors", "message", _REPEATED, "SparseTensorProto"),
    ],
    "SparseTensorProto": [
        (1, "values", "message", _OPTIONAL, "TensorProto"),
        (2, "indices", "message", _OPTIONAL, "TensorProto"),
    ],
    "NodeProto": [
        (1, "input", "string", _REPEATED, None),
        (2, "output", "string", _REPEATED, None),
        (3, "name", "string", _OPTIONAL, None),
        (4, "op_type", "string", _OPTIONAL, None),
        (5, "attribute", "message", _REPEATED, "AttributeProto"),
        (7, "domain", "string", _OPTIONAL, None),
    ],
    "GraphProto": [
        (1, "node", "message", _REPEATED, "NodeProto"),
        (2, "name", "string", _OPTIONAL, None),
        (5, "initializer", "message", _REPEATED, "TensorProto"),
        (11, "input", "message", _REPEATED, "ValueInfoProto"),
        (12, "output", "message", _REPEATED, "ValueInfoProto"),
        (15, "sparse_initializer", "message", _REPEATED, "SparseTensorProto"),
    ],
    "FunctionProto": [
        (1, "name", "string", _OPTIONAL, None),
        (7, "node", "message", _REPEATED, "NodeProto"),
        (10, "domain", "string", _OPTIONAL, None),
    ],
    "ModelProto": [
        (1, "ir_version", "int64", _OPTIONAL, None),
        (2, "producer_name", "string", _OPTIONAL, None),
        (3, "producer_version", "string", _OPTIONAL, None),
        (7, "graph", "message", _OPTIONAL, "GraphProto"),
        (8, "opset_import", "message", _REPEATED, "OperatorSetIdProto"),
        (25, "functions", "message", _REPEATED, "FunctionProto"),
    ],
}

# TensorProto.DataType values bncheck reads, and the element type each means.
FLOAT, UINT8, INT8, INT16, INT32, INT64, BOOL, FLOAT16, DOUBLE, BFLOAT16 = (
    1, 2, 3, 5, 6, 7, 9, 10, 11, 16
)  # fmt: skip
ELEMENT_TYPES = {
    FLOAT: "float32",
    UINT8: "uint8",
    INT8: "int8",
    INT16: "int16",
    INT32: "int32",
    INT64: "int64",
    BOOL: "bool",
    FLOAT16: "float16",
    DOUBLE: "float64",
    BFLOAT16: "bfloat16",
}
#: TensorProto.data_location: the values are in another file.
EXTERNAL = 1
#: AttributeProto.type values the probe writes.
ATTRIBUTE_INT, ATTRIBUTE_INTS = 2, 7


@cache
def model_class() -> Any:
    """The ``ModelProto`` message class."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field_type = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="bncheck/onnx_subset.proto", package=PACKAGE, syntax="proto2"
    )
    for message_name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=message_name)
        for number, name, kind, repeated, type_name in fields:
            added = message.field.add(
                name=name,
                number=number,
                type=getattr(field_type, f"TYPE_{kind.upper()}"),
                label=field_type.LABEL_REPEATED if repeated else field_type.LABEL_OPTIONAL,
            )
            if type_name is not None:
                added.type_name = f".{PACKAGE}.{type_name}"
            elif repeated and message_name == "TensorProto" and number != 1:
                added.options.packed = True  # as onnx.proto declares the data fields
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{PACKAGE}.ModelProto"))


def message_class(name: str) -> Any:
    """Another message class of the same file, e.g. ``NodeProto``."""
    from google.protobuf import message_factory

    descriptor = model_class().DESCRIPTOR.file.message_types_by_name[name]
    return message_factory.GetMessageClass(descriptor)
