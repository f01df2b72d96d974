"""The protocol buffer messages of TensorFlow and tf.keras that bncheck reads, defined here so that
reading them needs neither TensorFlow nor tf.keras, only the ``protobuf`` library.

Each message has only the fields bncheck uses, with TensorFlow's field numbers and types; the
parser skips the others. Sources: ``tensorflow/core/protobuf/tensor_bundle.proto``,
``tensorflow/core/framework/{tensor_shape,versions}.proto``,
``tensorflow/core/protobuf/{trackable_object_graph,saved_object_graph,meta_graph,saved_model}.proto``,
``tensorflow/core/framework/{graph,node_def,function,op_def,attr_value,tensor}.proto`` and
``tf_keras/protobuf/saved_metadata.proto``. Enumerations are read as plain numbers.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from bncheck.readers.codecs.proto_tables import Table, message_classes

_PACKAGE = "bncheck.tensorflow"

#: The messages bncheck reads (``proto_tables`` describes the format).
_MESSAGES: Table = {
    "VersionDef": (
        (1, "producer", "int32"),
        (2, "min_consumer", "int32"),
        (3, "bad_consumers", "repeated int32"),
    ),
    # A SavedModel's fingerprint.pb, which recalibrate writes anew
    # (``tensorflow/core/protobuf/fingerprint.proto``).
    "FingerprintDef": (
        (1, "saved_model_checksum", "uint64"),
        (2, "graph_def_program_hash", "uint64"),
        (3, "signature_def_hash", "uint64"),
        (4, "saved_object_graph_hash", "uint64"),
        (5, "checkpoint_hash", "uint64"),
        (6, "version", "VersionDef"),
    ),
    "TensorShapeDim": ((1, "size", "int64"),),
    "TensorShapeProto": ((2, "dim", "repeated TensorShapeDim"), (3, "unknown_rank", "bool")),
    # Only counted: a partitioned variable's full entry lists its slices.
    "TensorSliceProto": (),
    "BundleHeaderProto": (
        (1, "num_shards", "int32"),
        (2, "endianness", "int32"),
        (3, "version", "VersionDef"),
    ),
    "BundleEntryProto": (
        (1, "dtype", "int32"),
        (2, "shape", "TensorShapeProto"),
        (3, "shard_id", "int32"),
        (4, "offset", "int64"),
        (5, "size", "int64"),
        (6, "crc32c", "fixed32"),
        (7, "slices", "repeated TensorSliceProto"),
    ),
    "ObjectReference": ((1, "node_id", "int32"), (2, "local_name", "string")),
    "SerializedTensor": (
        (1, "name", "string"),
        (2, "full_name", "string"),
        (3, "checkpoint_key", "string"),
    ),
    "TrackableObject": (
        (1, "children", "repeated ObjectReference"),
        (2, "attributes", "repeated SerializedTensor"),
    ),
    "TrackableObjectGraph": ((1, "nodes", "repeated TrackableObject"),),
    "SavedUserObject": ((1, "identifier", "string"), (3, "metadata", "string")),
    # ``user_object`` is one case of the ``kind`` oneof; the other cases are left out.
    "SavedObject": (
        (1, "children", "repeated ObjectReference"),
        (4, "user_object", "SavedUserObject"),
    ),
    "SavedObjectGraph": ((1, "nodes", "repeated SavedObject"),),
    # The graph: only what finding batch moments needs (``tf_graph``). A map field is, on the
    # wire, a repeated message of key 1 and value 2.
    "TensorProto": (
        (1, "dtype", "int32"),
        (2, "tensor_shape", "TensorShapeProto"),
        (4, "tensor_content", "bytes"),
        (7, "int_val", "repeated int32"),
        (10, "int64_val", "repeated int64"),
    ),
    # ``list`` and ``func``: the functions a node calls (the probe checks each one's ops).
    "AttrValue": (
        (1, "list", "AttrListValue"),
        (2, "s", "bytes"),
        (8, "tensor", "TensorProto"),
        (10, "func", "NameAttrList"),
    ),
    "AttrListValue": ((9, "func", "repeated NameAttrList"),),
    "NameAttrList": ((1, "name", "string"), (2, "attr", "repeated AttrEntry")),
    "AttrEntry": ((1, "key", "string"), (2, "value", "AttrValue")),
    "NodeDef": (
        (1, "name", "string"),
        (2, "op", "string"),
        (3, "input", "repeated string"),
        (5, "attr", "repeated AttrEntry"),
    ),
    "OpDef": ((1, "name", "string"),),
    "FunctionDef": (
        (1, "signature", "OpDef"),
        (3, "node_def", "repeated NodeDef"),
        (5, "attr", "repeated AttrEntry"),
    ),
    "GradientDef": ((1, "function_name", "string"), (2, "gradient_func", "string")),
    "RegisteredGradient": ((1, "gradient_func", "string"),),
    "FunctionDefLibrary": (
        (1, "function", "repeated FunctionDef"),
        (2, "gradient", "repeated GradientDef"),
        (3, "registered_gradients", "repeated RegisteredGradient"),
    ),
    "GraphDef": ((1, "node", "repeated NodeDef"), (2, "library", "FunctionDefLibrary")),
    "MetaGraphDef": ((7, "object_graph_def", "SavedObjectGraph"),),
    "SavedModel": (
        (1, "saved_model_schema_version", "int64"),
        (2, "meta_graphs", "repeated MetaGraphDef"),
    ),
    # The same files read for their graphs (a ``.meta`` file is one MetaGraphDef): separate
    # messages, so that reading the object graph parses no graph.
    "GraphMetaGraphDef": (
        (2, "graph_def", "GraphDef"),
        (3, "saver_def", "SaverDef"),
        (7, "object_graph_def", "LoaderObjectGraph"),
    ),
    # The object graph as ``tf.saved_model.load`` reads it for the functions it may run (the
    # probe's scan): the names of concrete functions, wherever an object names one.
    "LoaderObjectGraph": (
        (1, "nodes", "repeated LoaderObject"),
        (2, "concrete_functions", "repeated LoaderFunctionEntry"),
    ),
    "LoaderFunctionEntry": ((1, "key", "string"),),
    "LoaderObject": (
        (6, "function", "LoaderFunction"),
        (8, "bare_concrete_function", "LoaderBareFunction"),
        (12, "captured_tensor", "LoaderCapturedTensor"),
    ),
    "LoaderFunction": ((1, "concrete_functions", "repeated string"),),
    "LoaderBareFunction": ((1, "concrete_function_name", "string"),),
    "LoaderCapturedTensor": ((2, "concrete_function", "string"),),
    "SaverDef": ((2, "save_tensor_name", "string"), (3, "restore_op_name", "string")),
    "GraphSavedModel": ((2, "meta_graphs", "repeated GraphMetaGraphDef"),),
    "SavedMetadataObject": (
        (2, "node_id", "int32"),
        (3, "node_path", "string"),
        (4, "identifier", "string"),
        (5, "metadata", "string"),
    ),
    "SavedMetadata": ((1, "nodes", "repeated SavedMetadataObject"),),
}


def message_class(name: str) -> Any:
    """The message class called ``name`` above, e.g. ``message_class("BundleEntryProto")()``."""
    return _classes()[name]


@cache
def _classes() -> dict[str, Any]:
    return message_classes("bncheck/tensorflow.proto", _PACKAGE, "proto3", _MESSAGES)


class WireError(ValueError):
    """The bytes are not protocol buffer wire format, or hold more fields than allowed."""


_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


def length_delimited(data: bytes | memoryview, number: int, max_fields: int) -> list[memoryview]:
    """The payloads of field ``number`` (a message, string or bytes field) of the message in
    ``data``, without parsing them: how much a message holds is checked before any of it is
    parsed. At most ``max_fields`` fields, of any number, are looked at; past that, or on bytes
    that are not wire format, ``WireError``."""
    view = memoryview(data)
    payloads = []
    position = fields = 0
    while position < len(view):
        fields += 1
        if fields > max_fields:
            raise WireError(f"more than {max_fields} fields in one message")
        tag, position = _varint(view, position)
        wire_type = tag & 7
        if wire_type == _VARINT:
            _, position = _varint(view, position)
        elif wire_type == _FIXED64:
            position += 8
        elif wire_type == _FIXED32:
            position += 4
        elif wire_type == _LENGTH_DELIMITED:
            length, position = _varint(view, position)
            if tag >> 3 == number:
                payloads.append(view[position : position + length])
            position += length
        else:
            raise WireError(f"wire type {wire_type}")
        if position > len(view):
            raise WireError("a field runs past the end")
    return payloads


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64:
        if position >= len(view):
            raise WireError("a number runs past the end")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise WireError("a number longer than 64 bits")
