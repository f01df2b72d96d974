"""The ONNX protocol buffer messages bncheck reads, defined here with ``protobuf`` alone.

The ``onnx`` package would bring the same classes with a C++ extension that takes about 1.6 s to
import; these are built from a field list in milliseconds. The field numbers and types are
``onnx/onnx.proto``'s (syntax proto2). Fields not listed are kept as unknown fields, so a model
parsed and serialised again (as the probe does) loses nothing.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bncheck.readers.codecs.proto_tables import Table, message_classes

PACKAGE = "bncheck.onnx"

#: The messages of onnx.proto bncheck reads (``proto_tables`` describes the format).
_MESSAGES: Table = {
    "StringStringEntryProto": (
        (1, "key", "string"),
        (2, "value", "string"),
    ),
    "OperatorSetIdProto": (
        (1, "domain", "string"),
        (2, "version", "int64"),
    ),
    "Dimension": (
        (1, "dim_value", "int64"),
        (2, "dim_param", "string"),
    ),
    "TensorShapeProto": ((1, "dim", "repeated Dimension"),),
    "TensorTypeProto": (
        (1, "elem_type", "int32"),
        (2, "shape", "TensorShapeProto"),
    ),
    "TypeProto": ((1, "tensor_type", "TensorTypeProto"),),
    "ValueInfoProto": (
        (1, "name", "string"),
        (2, "type", "TypeProto"),
    ),
    "TensorProto": (
        (1, "dims", "repeated int64"),
        (2, "data_type", "int32"),
        # The data fields are packed, as onnx.proto declares them.
        (4, "float_data", "packed float"),
        (5, "int32_data", "packed int32"),
        (7, "int64_data", "packed int64"),
        (8, "name", "string"),
        (9, "raw_data", "bytes"),
        (10, "double_data", "packed double"),
        (13, "external_data", "repeated StringStringEntryProto"),
        (14, "data_location", "int32"),
    ),
    "AttributeProto": (
        (1, "name", "string"),
        (2, "f", "float"),
        (3, "i", "int64"),
        (4, "s", "bytes"),
        (5, "t", "TensorProto"),
        (7, "floats", "repeated float"),
        (8, "ints", "repeated int64"),
        # Subgraphs (If, Loop, Scan bodies) and tensors that may keep their data elsewhere.
        (6, "g", "GraphProto"),
        (10, "tensors", "repeated TensorProto"),
        (11, "graphs", "repeated GraphProto"),
        (20, "type", "int32"),
        (22, "sparse_tensor", "SparseTensorProto"),
        (23, "sparse_tensors", "repeated SparseTensorProto"),
    ),
    "SparseTensorProto": (
        (1, "values", "TensorProto"),
        (2, "indices", "TensorProto"),
    ),
    "NodeProto": (
        (1, "input", "repeated string"),
        (2, "output", "repeated string"),
        (3, "name", "string"),
        (4, "op_type", "string"),
        (5, "attribute", "repeated AttributeProto"),
        (7, "domain", "string"),
    ),
    "GraphProto": (
        (1, "node", "repeated NodeProto"),
        (2, "name", "string"),
        (5, "initializer", "repeated TensorProto"),
        (11, "input", "repeated ValueInfoProto"),
        (12, "output", "repeated ValueInfoProto"),
        (15, "sparse_initializer", "repeated SparseTensorProto"),
    ),
    "FunctionProto": (
        (1, "name", "string"),
        (7, "node", "repeated NodeProto"),
        (10, "domain", "string"),
    ),
    "ModelProto": (
        (1, "ir_version", "int64"),
        (2, "producer_name", "string"),
        (3, "producer_version", "string"),
        (7, "graph", "GraphProto"),
        (8, "opset_import", "repeated OperatorSetIdProto"),
        (25, "functions", "repeated FunctionProto"),
    ),
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
def _classes() -> dict[str, Any]:
    return message_classes("bncheck/onnx_subset.proto", PACKAGE, "proto2", _MESSAGES)


def model_class() -> Any:
    """The ``ModelProto`` message class."""
    return _classes()["ModelProto"]


def message_class(name: str) -> Any:
    """Another message class of the same file, e.g. ``NodeProto``."""
    return _classes()[name]
