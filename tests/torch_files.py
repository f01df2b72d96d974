"""Writing PyTorch-format files without PyTorch, for tests: state dicts as ``torch.save`` lays them
out (zip archives and the legacy format), with any extra objects or raw pickle bytes mixed in.

The pickler is Python's own, with two additions: ``Name("module", "name")`` is written as that
global without importing it, and ``Tensor`` objects become ``_rebuild_tensor_v2`` calls on a
storage given by persistent id, exactly as ``torch.save`` writes them.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_STORAGES = {"float32": "FloatStorage", "float16": "HalfStorage", "int64": "LongStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class Name:
    """A global written by name, never imported."""

    module: str
    name: str

    def __call__(self, *arguments: Any) -> Any:
        raise TypeError("a Name only stands for a global in a pickle; it is never called")


@dataclass(frozen=True)
class Instance:
    """An object of class ``cls`` with ``state``, written as ``torch.save(model)`` writes one:
    ``NEWOBJ`` then ``BUILD``."""

    cls: Name
    state: Any


@dataclass(frozen=True)
class Tensor:
    """A tensor over storage ``key``; ``offset``, ``size`` and ``stride`` as in the pickle."""

    key: str
    values: np.ndarray
    offset: int = 0
    size: tuple[int, ...] | None = None
    stride: tuple[int, ...] | None = None
    numel: int | None = None
    """What the persistent id claims the storage holds; the values' count by default."""

    def __reduce__(self) -> tuple[Any, ...]:
        size = self.size if self.size is not None else self.values.shape
        stride = self.stride if self.stride is not None else ((1,) if len(size) == 1 else ())
        storage = _Storage(self.key, str(self.values.dtype), self.numel or self.values.size)
        rebuild = Name("torch._utils", "_rebuild_tensor_v2")
        return rebuild, (storage, self.offset, tuple(size), tuple(stride), False, OrderedDict())


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str
    numel: int


class _Pickler(pickle._Pickler):
    # pickle's __init__ sets it from the file; typeshed does not declare it.
    write: Callable[[bytes], object]

    def __init__(self, file: io.BytesIO, legacy: bool) -> None:
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            storage_type = Name("torch", _STORAGES[obj.dtype])
            if self.legacy:
                return ("storage", storage_type, obj.key, "cpu", obj.numel, None)
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        if isinstance(obj, Name):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, Instance):
            self.save(obj.cls)
            self.write(pickle.EMPTY_TUPLE + pickle.NEWOBJ)
            self.save(obj.state)
            self.write(pickle.BUILD)
            return
        super().save(obj, save_persistent_id)  # type: ignore[misc]  # undeclared in typeshed


def dumps(obj: Any, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, legacy).dump(obj)
    return buffer.getvalue()


def state_dict(arrays: Mapping[str, np.ndarray], **extra: Any) -> OrderedDict[str, Any]:
    """A state dict of ``Tensor``s over storages "0", "1", ..., with extra entries."""
    state: OrderedDict[str, Any] = OrderedDict(
        (name, Tensor(str(index), np.asarray(values)))
        for index, (name, values) in enumerate(arrays.items())
    )
    state.update(extra)
    return state


def tensors_of(obj: Any) -> list[Tensor]:
    found: list[Tensor] = []

    def walk(node: Any) -> None:
        if isinstance(node, Tensor):
            found.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(obj)
    return found


def write_zip(path: Path, obj: Any, data_pkl: bytes | None = None, top: str = "archive") -> Path:
    """``torch.save``'s zip layout for ``obj`` (or for ``data_pkl`` as its pickle, with the
    storages of ``obj``'s tensors)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{top}/data.pkl", data_pkl if data_pkl is not None else dumps(obj))
        archive.writestr(f"{top}/byteorder", "little")
        storages = {tensor.key: tensor.values for tensor in tensors_of(obj)}
        for key, values in storages.items():
            archive.writestr(f"{top}/data/{key}", values.tobytes())
        archive.writestr(f"{top}/version", "3\n")
    return path


def write_legacy(path: Path, obj: Any, little_endian: bool = True) -> Path:
    """``torch.save``'s legacy layout: magic, protocol, system information, the object, the
    storage keys, then each storage as an 8-byte count and its bytes."""
    tensors = {tensor.key: tensor for tensor in tensors_of(obj)}
    parts = [
        pickle.dumps(LEGACY_MAGIC, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": little_endian}, protocol=2),
        dumps(obj, legacy=True),
        pickle.dumps(list(tensors), protocol=2),
    ]
    for tensor in tensors.values():
        parts.append(np.int64(tensor.values.size).tobytes() + tensor.values.tobytes())
    path.write_bytes(b"".join(parts))
    return path


def bn_arrays(prefix: str, channels: int = 4, tracked: int | None = 100) -> dict[str, np.ndarray]:
    """A trained-looking BatchNorm layer's tensors under ``prefix``."""
    rng = np.random.default_rng(len(prefix))
    arrays = {
        f"{prefix}.weight": rng.uniform(0.5, 1.5, channels).astype("float32"),
        f"{prefix}.bias": rng.normal(0, 0.2, channels).astype("float32"),
        f"{prefix}.running_mean": rng.normal(0, 1, channels).astype("float32"),
        f"{prefix}.running_var": rng.uniform(0.2, 2, channels).astype("float32"),
    }
    if tracked is not None:
        arrays[f"{prefix}.num_batches_tracked"] = np.array(tracked, dtype="int64")
    return arrays
