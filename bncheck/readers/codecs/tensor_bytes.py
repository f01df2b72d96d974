"""Raw tensor bytes to NumPy arrays, for the element types PyTorch, safetensors and ONNX share.

NumPy has no bfloat16: its values are the upper half of a float32, so they are widened exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bncheck.errors import ModelReadError

#: NumPy type of each element type name (little-endian; bfloat16 as its raw 16 bits).
_NUMPY = {
    "float64": "<f8",
    "float32": "<f4",
    "float16": "<f2",
    "bfloat16": "<u2",
    "int64": "<i8",
    "int32": "<i4",
    "int16": "<i2",
    "int8": "i1",
    "uint8": "u1",
    "bool": "?",
}

INTEGER_TYPES = frozenset({"int64", "int32", "int16", "int8", "uint8"})
#: Most dimensions a tensor may have. NumPy, which holds every tensor bncheck reads, makes no array
#: of more (64 since NumPy 2, 32 before), and no real model comes near; a file claiming 100,000
#: would otherwise cost time quadratic in the count just to multiply its sizes.
MAX_DIMENSIONS = 64
#: Most channels a model's BatchNorm layers may have in all. The largest real networks have a
#: few hundred thousand; each channel costs every rule some work, so a small file whose layers
#: all share one huge tensor would otherwise take minutes to judge.
MAX_BATCHNORM_CHANNELS = 4_000_000


def itemsize(dtype: str) -> int:
    """Bytes per element; ``ModelReadError`` for a type bncheck does not read."""
    if dtype not in _NUMPY:
        raise ModelReadError(f"unsupported tensor element type {dtype}")
    return np.dtype(_NUMPY[dtype]).itemsize


def element_count(shape: Sequence[int], item_bytes: int, present: int, what: str) -> int:
    """Elements of a tensor of ``shape`` (non-negative sizes), refused with ``ModelReadError``
    when it has more than ``MAX_DIMENSIONS`` or needs more than the ``present`` bytes at
    ``item_bytes`` each: the product stops growing as soon as it passes what is there."""
    if len(shape) > MAX_DIMENSIONS:
        raise ModelReadError(
            f"{what} has {len(shape)} dimensions; bncheck reads at most {MAX_DIMENSIONS}"
        )
    if 0 in shape:
        return 0
    most = present // max(item_bytes, 1)
    count = 1
    for size in shape:
        count *= size
        if count > most:
            raise ModelReadError(f"{what}: its shape needs more than the {present} bytes present")
    return count


def check_channel_total(total: int) -> None:
    """Refuses a model whose BatchNorm layers have more than ``MAX_BATCHNORM_CHANNELS``
    channels in all."""
    if total > MAX_BATCHNORM_CHANNELS:
        raise ModelReadError(
            f"the BatchNorm layers have more than {MAX_BATCHNORM_CHANNELS} channels in all "
            f"({total} so far); no real network has that many"
        )


def decode(raw: bytes, dtype: str, big_endian: bool = False) -> np.ndarray:
    """The elements in ``raw``, as float32/float64 for floating types and int64 for integers."""
    numpy_type = np.dtype(_NUMPY[dtype])
    if big_endian:
        numpy_type = numpy_type.newbyteorder(">")
    if len(raw) % numpy_type.itemsize:
        raise ModelReadError(f"{len(raw)} bytes are not a whole number of {dtype} values")
    values = np.frombuffer(raw, dtype=numpy_type)
    if dtype == "bfloat16":
        return (values.astype(np.uint32) << 16).view(np.float32)
    if dtype == "float16":
        return values.astype(np.float32)
    if dtype in INTEGER_TYPES or dtype == "bool":
        return values.astype(np.int64)
    return values.astype(numpy_type.newbyteorder("="))
