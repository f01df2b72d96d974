"""Writing new running statistics into a safetensors file.

The header says where each tensor's bytes lie, one tensor after another; the ``running_mean``
and ``running_var`` of each layer, named as the reader names them (``layer1.0.bn1``), are
overwritten there in their stored type. The header and every other byte stay as they were.
"""

from __future__ import annotations

import os

from bncheck.readers.pytorch import safetensors, torch_layers
from bncheck.recalibrate.splice import (
    Patch,
    Statistics,
    Stored,
    check_layers,
    check_read_back,
    encode,
    write_patched,
)
from bncheck.recalibrate.write import WriteError

_ARRAYS = ("running_mean", "running_var")


def write(source: str, target: str, statistics: Statistics) -> None:
    """Write ``target`` as the safetensors file ``source`` with new running statistics."""
    written: dict[str, tuple[Stored, Stored]] = {}

    def patches() -> list[Patch]:
        with open(source, "rb") as handle:
            data_start, entries = safetensors.read_header(handle, os.path.getsize(source))
        layers = {
            candidate.prefix or "(top level)": candidate
            for candidate in torch_layers.candidates(entries)
        }
        check_layers(statistics, list(layers), source)
        found = []
        for path, values in statistics.items():
            stored = []
            for leaf, array in zip(_ARRAYS, values, strict=True):
                entry = entries[layers[path].names[leaf]]
                what = f"{path} {leaf}"
                if entry.dtype not in safetensors.DTYPES:
                    raise WriteError(
                        f"{what} is stored as {entry.dtype}, which bncheck does not write"
                    )
                dtype = safetensors.DTYPES[entry.dtype]
                count = 1
                for size in entry.shape:
                    count *= size
                data = encode(array, dtype, count, what)
                stored.append(Stored(data, dtype))
                found.append(Patch(data_start + entry.begin, data, what))
            written[path] = (stored[0], stored[1])
        return found

    def check(copy: str) -> None:
        check_read_back(safetensors.read(copy).layers, written)

    write_patched(source, target, patches, check)
