"""safetensors files, read without the safetensors package.

The format is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON describing each
tensor (``{"name": {"dtype": "F32", "shape": [64], "data_offsets": [begin, end]}, ...}``, with an
optional ``__metadata__`` of strings), then the tensors' bytes; offsets count from the end of the
header. It holds no code and no architecture.

The header length is checked against the file and the format's 100 MB limit, and every entry's
offsets against the file size, its shape (at most ``MAX_DIMENSIONS`` sizes) and byte count
against its type, and the entries against each other (no two share bytes), before any tensor is
read. Then only the BatchNorm tensors are read. BatchNorm layers are found by PyTorch's tensor
names (``layer1.0.bn1.running_mean``), as in a state dict, whose conventions they follow.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers.codecs import tensor_bytes
from bncheck.readers.framework_signatures import MAX_SAFETENSORS_HEADER
from bncheck.readers.pytorch import torch_layers
from bncheck.records import record

#: safetensors element types bncheck reads, by their names in the header.
DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}
#: Bytes per element of the other types the format defines, to check their offsets too.
_OTHER_SIZES = {
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "F8_E8M0": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "C64": 8,
}
NOTE = (
    "safetensors file: tensors only, no architecture, momentum or eps; PyTorch's tensor names "
    "and conventions, initial values (weight 1, bias 0, running_mean 0, running_var 1) and eps "
    "1e-5 are assumed"
)


@record
class Entry:
    """One tensor of the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    """Offset of its first byte from the end of the header."""
    end: int


def read(path: str) -> ModelDescription:
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        data_start, entries = read_header(handle, file_size)

        def read_array(name: str) -> np.ndarray:
            entry = entries[name]
            if entry.dtype not in DTYPES:
                raise ModelReadError(f"{name}: unsupported element type {entry.dtype}")
            handle.seek(data_start + entry.begin)
            raw = handle.read(entry.end - entry.begin)
            return tensor_bytes.decode(raw, DTYPES[entry.dtype]).reshape(entry.shape)

        found = torch_layers.candidates(entries)
        tensor_bytes.check_channel_total(
            sum(_numel(entries[candidate.names["running_mean"]].shape) for candidate in found)
        )
        layers = [
            torch_layers.bn_layer(
                candidate,
                read_array,
                path=candidate.prefix or "(top level)",
                source=", ".join(candidate.names.values()),
            )
            for candidate in found
        ]
    notes = [NOTE]
    reset = torch_layers.pre_041_note(layers)
    if reset is not None:
        notes.append(reset)
    return ModelDescription(
        path=path, format="safetensors", layers=tuple(layers), notes=tuple(notes)
    )


def read_header(handle: Any, file_size: int) -> tuple[int, dict[str, Entry]]:
    """Where the data starts, and every tensor entry, all checked against the file."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise ModelReadError("the file is too short for a safetensors header")
    (length,) = struct.unpack("<Q", prefix)
    if length > MAX_SAFETENSORS_HEADER or length > file_size - 8:
        raise ModelReadError(
            f"safetensors header length {length} exceeds the file ({file_size} bytes) or the "
            "format's 100 MB limit"
        )
    try:
        header = json.loads(handle.read(length).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelReadError(f"safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelReadError("safetensors header is not a JSON object")
    data_size = file_size - 8 - length
    entries = {
        name: _entry(name, value, data_size)
        for name, value in header.items()
        if name != "__metadata__"
    }
    _check_layout(entries, data_size)
    return 8 + length, entries


def _check_layout(entries: dict[str, Entry], data_size: int) -> None:
    """Refuses a layout the safetensors library refuses: the tensors lie one after another from
    the start of the data to its end, without gaps or shared bytes. So each byte belongs to one
    tensor, and reading every BatchNorm tensor costs at most the file's size."""
    ordered = sorted(entries.items(), key=lambda item: (item[1].begin, item[1].end))
    end, previous = 0, None
    for name, entry in ordered:
        if entry.begin < end:
            raise ModelReadError(
                f"safetensors entries {previous!r} and {name!r} share bytes; the format lays "
                "tensors one after another"
            )
        if entry.begin > end:
            raise ModelReadError(
                f"safetensors entry {name!r} starts at byte {entry.begin} of the data, leaving "
                f"a gap after byte {end}; the format lays tensors one after another"
            )
        end, previous = entry.end, name
    if end != data_size:
        raise ModelReadError(
            f"safetensors data holds {data_size - end} bytes after its last tensor; the format "
            "ends with the last tensor"
        )


def _entry(name: str, value: Any, data_size: int) -> Entry:
    if not isinstance(value, dict):
        raise ModelReadError(f"safetensors entry {name!r} is not a JSON object")
    dtype, shape, offsets = value.get("dtype"), value.get("shape"), value.get("data_offsets")
    if not isinstance(dtype, str) or (dtype not in DTYPES and dtype not in _OTHER_SIZES):
        raise ModelReadError(f"safetensors entry {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or len(shape) > tensor_bytes.MAX_DIMENSIONS:
        raise ModelReadError(
            f"safetensors entry {name!r} has an invalid shape (a list of at most "
            f"{tensor_bytes.MAX_DIMENSIONS} sizes)"
        )
    if not all(_natural(size) for size in shape):
        raise ModelReadError(f"safetensors entry {name!r} has an invalid shape")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_natural(offset) for offset in offsets)
        or not offsets[0] <= offsets[1] <= data_size
    ):
        raise ModelReadError(
            f"safetensors entry {name!r} has offsets {offsets!r} outside the file's "
            f"{data_size} data bytes"
        )
    itemsize = tensor_bytes.itemsize(DTYPES[dtype]) if dtype in DTYPES else _OTHER_SIZES[dtype]
    count = tensor_bytes.element_count(shape, itemsize, data_size, f"safetensors entry {name!r}")
    expected = count * itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelReadError(
            f"safetensors entry {name!r} spans {offsets[1] - offsets[0]} bytes, its shape "
            f"{shape} of {dtype} needs {expected}"
        )
    return Entry(dtype, tuple(shape), offsets[0], offsets[1])


def _numel(shape: tuple[int, ...]) -> int:
    """Elements of a checked entry's shape (bounded by the file, so the product is small)."""
    count = 1
    for size in shape:
        count *= size
    return count


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
