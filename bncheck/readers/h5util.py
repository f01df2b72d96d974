"""Safe access to HDF5 content: bounded, validated reads of small arrays and attributes."""

from __future__ import annotations

import io
import json
from typing import Any

import h5py
import numpy as np

from bncheck.errors import ModelReadError

#: A BatchNormalization array has one value per channel; anything larger is not one, and reading
#: it would only waste memory (or be a decompression bomb).
MAX_BN_VALUES = 1 << 24

#: Largest JSON configuration bncheck will parse.
MAX_CONFIG_BYTES = 256 << 20

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def lookup(group: h5py.Group, path: str, _links_followed: int = 0) -> object | None:
    """The object at ``path`` below ``group``; ``None`` when there is none.

    Links inside the file are followed; a link to another file is refused, so that reading a
    model never makes HDF5 open some other file on disk.
    """
    if _links_followed > 16:
        raise ModelReadError(f"{path}: too many nested links")
    current: object = group.file if path.startswith("/") else group
    parts = [part for part in path.split("/") if part]
    for part in parts:
        if not isinstance(current, h5py.Group):
            return None
        if _is_hard_link(current, part):  # the common case, without building link objects
            current = current[part]
            continue
        link = current.get(part, getlink=True)
        if link is None:
            return None
        where = f"{current.name.rstrip('/')}/{part}".lstrip("/")
        if isinstance(link, h5py.ExternalLink):
            raise ModelReadError(
                f"{where} links to another file ({link.filename}); only the given file is read"
            )
        if isinstance(link, h5py.SoftLink):
            target = lookup(current, link.path, _links_followed + 1)
            if target is None:
                raise ModelReadError(f"{where} is a link to {link.path}, which does not exist")
            current = target
        else:
            current = current[part]
    return current


def _is_hard_link(group: h5py.Group, name: str) -> bool:
    encoded = name.encode()
    links = group.id.links
    return (
        b"\0" not in encoded
        and links.exists(encoded)
        and links.get_info(encoded).type == h5py.h5l.TYPE_HARD
    )


def read_bn_array(node: object, what: str) -> np.ndarray:
    """Read a small numeric dataset (one BN array) into memory as a float array."""
    if not isinstance(node, h5py.Dataset):
        raise ModelReadError(f"{what} is not a dataset")
    if node.shape is None or node.size == 0:
        raise ModelReadError(f"{what} is empty")
    if node.size > MAX_BN_VALUES:
        raise ModelReadError(f"{what} claims {node.size} values, too many for a BatchNorm array")
    if node.external or node.is_virtual:
        raise ModelReadError(
            f"{what} stores its values in another file; only the given file is read"
        )
    dtype = node.dtype
    if dtype.itemsize == 2 and _has_attr(node, "dtype") and node.attrs["dtype"] == "bfloat16":
        # Keras 3 stores bfloat16 as raw 16-bit words; they are the top half of a float32.
        raw = np.frombuffer(node[()].tobytes(), dtype="<u2")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(node.shape)
    if dtype.kind not in "fiu":
        raise ModelReadError(f"{what} has non-numeric type {dtype}")
    array = np.asarray(node[()])
    if dtype.kind != "f":
        array = array.astype(np.float32)
    return array


def text_attr(obj: h5py.HLObject, key: str) -> str | None:
    """A string attribute, decoded; ``None`` when absent."""
    if not _has_attr(obj, key):
        return None
    value = obj.attrs[key]
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise ModelReadError(f"attribute {key!r} is not text")


def _has_attr(obj: h5py.HLObject, key: str) -> bool:
    """``key in obj.attrs``, without building the attribute manager (a hot path)."""
    return bool(h5py.h5a.exists(obj.id, key.encode()))


def text_list_attr(obj: h5py.HLObject, key: str) -> list[str] | None:
    """A list-of-strings attribute (``layer_names``, ``weight_names``); ``None`` when absent."""
    if key not in obj.attrs:
        return None
    values = obj.attrs[key]
    out = []
    for value in np.asarray(values).ravel():
        if isinstance(value, bytes):
            out.append(value.decode("utf-8", errors="replace"))
        elif isinstance(value, str):
            out.append(value)
        else:
            raise ModelReadError(f"attribute {key!r} holds {type(value).__name__}, not names")
    return out


def names_attr(obj: h5py.HLObject, key: str) -> list[str] | None:
    """A list of names (``layer_names``, ``weight_names``) as Keras writes it; ``None`` when absent.

    From Keras 2.1.5 on (and in tf.keras and Keras 3), a list too large for HDF5's 64 KiB object
    header is split into ``key0``, ``key1``, ... (``save_attributes_to_hdf5_group``); they are
    joined back in order, as ``load_attributes_from_hdf5_group`` does.
    """
    whole = text_list_attr(obj, key)
    if whole is not None:
        return whole
    names: list[str] = []
    chunk = 0
    while f"{key}{chunk}" in obj.attrs:
        names += text_list_attr(obj, f"{key}{chunk}") or []
        chunk += 1
    return names if chunk else None


def parse_json_config(text: str | bytes, what: str) -> dict[str, Any]:
    if len(text) > MAX_CONFIG_BYTES:
        raise ModelReadError(f"{what} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelReadError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelReadError(f"{what} is not a JSON object")
    return config


class FileWindow(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes of an open file starting at ``start``.

    Lets h5py read an HDF5 file stored uncompressed inside a zip archive in place, so that only
    the bytes it asks for are read.
    """

    def __init__(self, raw: io.BufferedReader, start: int, size: int) -> None:
        super().__init__()
        self._raw = raw
        self._start = start
        self._size = size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError("seek before the start of the file")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._size - self._pos))
        if count == 0:
            return 0
        self._raw.seek(self._start + self._pos)
        got = self._raw.readinto(view[:count])
        self._pos += got
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()
