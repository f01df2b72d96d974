"""Protocol buffer message classes built from a table of fields, with the ``protobuf`` library
alone: the TensorFlow and ONNX readers declare the messages they read this way instead of
importing TensorFlow's or ONNX's generated classes (seconds of import).

A table maps each message name to its fields as ``(number, name, type)``. A type is a scalar
(``SCALARS``) or the name of another message of the table, prefixed with ``repeated `` for a
repeated field or with ``packed `` for a repeated scalar written packed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: Message name -> its fields as (number, name, type).
Table = Mapping[str, Sequence[tuple[int, str, str]]]

SCALARS = ("int32", "int64", "uint64", "fixed32", "bool", "float", "double", "string", "bytes")


def message_classes(file_name: str, package: str, syntax: str, table: Table) -> dict[str, Any]:
    """Every message class of ``table``, by name, as one ``.proto`` file ``file_name`` in
    ``package`` and ``syntax`` (``proto2`` or ``proto3``) would define them."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field_type = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(name=file_name, package=package, syntax=syntax)
    for message_name, fields in table.items():
        message = proto.message_type.add(name=message_name)
        for number, field_name, declared in fields:
            label, _, kind = declared.rpartition(" ")
            field = message.field.add(
                name=field_name,
                number=number,
                label=field_type.LABEL_REPEATED if label else field_type.LABEL_OPTIONAL,
            )
            if kind in SCALARS:
                field.type = getattr(field_type, f"TYPE_{kind.upper()}")
            else:
                field.type = field_type.TYPE_MESSAGE
                field.type_name = f".{package}.{kind}"
            if label == "packed":
                field.options.packed = True
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))
        for name in table
    }
