"""Safe access to HDF5 content: bounded, validated reads of small arrays and attributes."""

from __future__ import annotations

import contextlib
import contextvars
import io
import json
from collections.abc import Iterator
from typing import IO, Any

import h5py
import numpy as np

from bncheck.errors import ModelReadError

#: A BatchNormalization array has one value per channel; anything larger is not one, and reading
#: it would only waste memory (or be a decompression bomb).
MAX_BN_VALUES = 1 << 24

#: Largest file bncheck parses as a whole as JSON (kept for the readers of other formats).
MAX_CONFIG_BYTES = 256 << 20

#: Largest Keras JSON configuration (``config.json``, ``model_config``, a shard index): the
#: configuration of a model of tens of thousands of layers is a few MiB.
MAX_JSON_BYTES = 32 << 20

#: Deepest nesting of a JSON configuration; a model nested in a model adds a handful of levels.
MAX_JSON_DEPTH = 200

#: Links bncheck visits in one HDF5 file, all lookups and walks together.
MAX_LINKS = 1_000_000

#: Deepest group nesting bncheck walks.
MAX_DEPTH = 64

#: Bytes of arrays bncheck reads out of one HDF5 file: every BatchNorm array of the largest
#: model is a few MiB.
MAX_READ_BYTES = 256 << 20

#: The most a compressed dataset may expand (values declared per byte stored); Keras never
#: compresses its datasets, and deflate cannot pass about 1000.
MAX_COMPRESSION = 100

#: Values a dataset may declare beyond what it stores: a fill value, or a compression header.
_SLACK_BYTES = 64 << 10

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

NO_LINKS = "bncheck follows no links, so it refuses a file that holds one where it reads"


class _FileBudget:
    """What has been spent on one open HDF5 file (a plain class: a dataclass costs more to
    create, at import, than bncheck's static path spends on most of its work)."""

    __slots__ = ("links", "read_bytes", "arrays", "file_size")

    def __init__(self) -> None:
        self.links = 0
        self.read_bytes = 0
        self.arrays: dict[int, tuple[str, np.ndarray]] = {}
        """Each dataset read, by object address: the name it was read by, and its values."""
        self.file_size: int | None = None
        """The file's size in bytes, once asked."""


def _read_before(budget: _FileBudget, address: int, name: str, what: str) -> np.ndarray | None:
    """The values of the dataset at ``address`` if it was read before, by the same name; a file
    whose dataset is read under two names (a hard link) is refused."""
    if address not in budget.arrays:
        return None
    first, values = budget.arrays[address]
    if first != name:
        raise ModelReadError(
            f"{what} is the same dataset as {first} (a hard link); bncheck reads files in which "
            "each array has one name"
        )
    return values


_BUDGETS: contextvars.ContextVar[dict[int, _FileBudget] | None] = contextvars.ContextVar(
    "bncheck_h5_budgets", default=None
)


@contextlib.contextmanager
def budgeted() -> Iterator[None]:
    """Share one budget per open file among every read inside the block, so that a dataset is
    read once and a file's limits count all its lookups and walks together."""
    token = _BUDGETS.set({})
    try:
        yield
    finally:
        _BUDGETS.reset(token)


def _budget(obj: h5py.HLObject) -> _FileBudget:
    return _budget_of(obj.id)


def _budget_of(oid: Any) -> _FileBudget:
    budgets = _BUDGETS.get()
    if budgets is None:
        return _FileBudget()  # outside `budgeted`: each call on its own
    fileno = oid.fileno
    budget = budgets.get(fileno)
    if budget is None:
        budget = budgets[fileno] = _FileBudget()
    return budget


def address(obj: h5py.HLObject) -> int:
    """The object's address in its file: its identity, whatever name reached it."""
    return int(h5py.h5o.get_info(obj.id).addr)


def name_parts(path: str, what: str) -> list[str]:
    """The components of a path below a group. A path that HDF5 would resolve anywhere else (a
    leading ``/`` goes to the file's root, ``//`` and ``.`` are skipped) is refused, so that a
    name means one object, the same for every reader and the writer."""
    parts = path.split("/")
    if any(part in ("", ".") or "\0" in part for part in parts):
        raise ModelReadError(
            f"{what} names {path!r}, which is not a plain path below its group "
            "(an empty, '.' or '/'-rooted component); bncheck resolves no such name"
        )
    return parts


def lookup(group: h5py.Group, path: str) -> object | None:
    """The object at ``path`` below ``group`` through hard links only; ``None`` when there is
    none. A soft link or a link to another file on the way is refused: bncheck follows no link,
    so that a name cannot lead out of the file or to another object than the one it names."""
    if path == "":
        return group
    current: object = group
    for part in name_parts(path, _where(group, "")):
        if not isinstance(current, h5py.Group):
            return None
        current = child(current, part)
        if current is None:
            return None
    return current


def child(group: h5py.Group, name: str) -> object | None:
    """The object ``group`` holds as ``name`` (one component), when it is a hard link."""
    budget = _budget(group)
    budget.links += 1
    if budget.links > MAX_LINKS:
        raise ModelReadError(f"the file holds more than {MAX_LINKS} links to visit")
    encoded = name.encode()
    links = group.id.links
    if "/" in name or name in ("", ".") or b"\0" in encoded or not links.exists(encoded):
        return None
    kind = links.get_info(encoded).type
    if kind != h5py.h5l.TYPE_HARD:
        raise ModelReadError(f"{_where(group, name)} {_link_kind(group, name, kind)}; {NO_LINKS}")
    # What ``group[name]`` returns, without its per-call name and property-list handling.
    found = h5py.h5o.open(group.id, encoded)
    if isinstance(found, h5py.h5g.GroupID):
        return h5py.Group(found)
    if isinstance(found, h5py.h5d.DatasetID):
        return h5py.Dataset(found)
    if isinstance(found, h5py.h5t.TypeID):
        return h5py.Datatype(found)
    raise ModelReadError(f"{_where(group, name)} is no group, dataset or named type")


def _link_kind(group: h5py.Group, name: str, kind: int) -> str:
    link = group.get(name, getlink=True)
    if kind == h5py.h5l.TYPE_EXTERNAL and isinstance(link, h5py.ExternalLink):
        return f"links to another file ({link.filename})"
    if kind == h5py.h5l.TYPE_SOFT and isinstance(link, h5py.SoftLink):
        return f"is a soft link (to {link.path})"
    return "is a user-defined link"


def children(group: h5py.Group) -> Iterator[tuple[str, object]]:
    """The objects ``group`` holds, by name, each through a hard link (``child``)."""
    for name in group:
        found = child(group, name)
        if found is not None:
            yield name, found


class Walk:
    """One walk over a file's groups, each visited once: a group reached by a second name (hard
    links that make a cycle or a shared subtree) or nested deeper than ``MAX_DEPTH`` is refused,
    so that a walk is linear in the file."""

    def __init__(self) -> None:
        self._visited: set[int] = set()

    def enter(self, group: h5py.Group, depth: int) -> None:
        here = address(group)
        if here in self._visited:
            raise ModelReadError(
                f"{_where(group, '')} is a group reached by a second name (a hard link); "
                "bncheck reads files in which each group has one name"
            )
        self._visited.add(here)
        if depth > MAX_DEPTH:
            raise ModelReadError(f"groups are nested deeper than {MAX_DEPTH} levels")


def walk_links(root: h5py.Group) -> Iterator[tuple[str, object]]:
    """Every object below ``root`` with its path, in name order, a group's content after it
    (the order of ``h5py.Group.visit_links``), through hard links only (``child``)."""
    walk = Walk()

    def below(group: h5py.Group, prefix: str, depth: int) -> Iterator[tuple[str, object]]:
        walk.enter(group, depth)
        for name, found in children(group):
            yield f"{prefix}{name}", found
            if isinstance(found, h5py.Group):
                yield from below(found, f"{prefix}{name}/", depth + 1)

    return below(root, "", 0)


def _where(group: h5py.Group, name: str) -> str:
    base = (group.name or "/").rstrip("/")
    return f"{base}/{name}".strip("/") or "/"


def read_values(node: object, what: str) -> np.ndarray:
    """A small numeric dataset's values as stored, read once per file (``budgeted``), after its
    declared size was checked against the bytes the file holds for it (``read_values_id``)."""
    if not isinstance(node, h5py.Dataset):
        raise ModelReadError(f"{what} is not a dataset")
    return _read_values(node.id, address(node), _name_of(node), what, False)[0]


def _name_of(node: h5py.Dataset) -> str:
    return (node.name or "").lstrip("/")


def is_bfloat16(node: h5py.Dataset) -> bool:
    """Whether Keras 3 stored the dataset as bfloat16 (16-bit words marked by a ``dtype``)."""
    return node.dtype.itemsize == 2 and text_attr(node, "dtype") == "bfloat16"


def read_bn_array(node: object, what: str) -> np.ndarray:
    """Read a small numeric dataset (one BN array) into memory as a float array."""
    if not isinstance(node, h5py.Dataset):
        raise ModelReadError(f"{what} is not a dataset")
    values, bfloat16 = _read_values(node.id, address(node), _name_of(node), what, True)
    return _as_float(values, bfloat16)


def _as_float(values: np.ndarray, bfloat16: bool) -> np.ndarray:
    """A BN array's stored values as floats."""
    if bfloat16:
        # Keras 3 stores bfloat16 as raw 16-bit words; they are the top half of a float32.
        raw = np.frombuffer(values.tobytes(), dtype="<u2")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(values.shape)
    if values.dtype.kind != "f":
        return values.astype(np.float32)
    return values


def text_attr(obj: h5py.HLObject, key: str) -> str | None:
    """A string attribute, decoded; ``None`` when absent."""
    if not _has_attr(obj, key):
        return None
    value = attr_value(obj, key)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise ModelReadError(f"attribute {key!r} is not text")


def _has_attr(obj: h5py.HLObject, key: str) -> bool:
    """``key in obj.attrs``, without building the attribute manager (a hot path)."""
    return bool(h5py.h5a.exists(obj.id, key.encode()))


#: Most values bncheck reads from one attribute (a list of names): Keras lists one per layer or
#: variable.
MAX_ATTR_VALUES = 1 << 18


def attr_value(obj: h5py.HLObject, key: str) -> Any:
    """An attribute's value, once its size is known to be modest and present in the file."""
    return attr_value_id(obj.id, key)


def text_list_attr(obj: h5py.HLObject, key: str) -> list[str] | None:
    """A list-of-strings attribute (``layer_names``, ``weight_names``); ``None`` when absent."""
    if not _has_attr(obj, key):
        return None
    values = attr_value(obj, key)
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
    while _has_attr(obj, f"{key}{chunk}"):
        names += text_list_attr(obj, f"{key}{chunk}") or []
        chunk += 1
    return names if chunk else None


# --- The same checks on h5py's low-level objects -------------------------------------------
#
# A reader that knows what it looks for (the Keras 3 archive, guided by its configuration) works
# on h5py's object identifiers: a lookup costs one link query and one open, where h5py's
# high-level objects build a property list, a name and a wrapper for each.

#: An open HDF5 object: h5py's ``GroupID``, ``DatasetID`` or ``TypeID`` (``h5py.h5o.open``).
ObjectID = Any


def joined(where: str, name: str) -> str:
    """``name`` below the group at ``where`` ("" for the root), as messages show paths."""
    return f"{where}/{name}" if where else name


def open_hard(gid: ObjectID, name: str, where: str) -> tuple[ObjectID, int] | None:
    """The object the group ``gid`` (at ``where``) holds as ``name`` (one component) and its
    address, when it is a hard link; ``None`` when there is none. Any other link is refused,
    as ``child`` refuses it."""
    budget = _budget_of(gid)
    budget.links += 1
    if budget.links > MAX_LINKS:
        raise ModelReadError(f"the file holds more than {MAX_LINKS} links to visit")
    if "/" in name or name in ("", ".") or "\0" in name:
        return None
    encoded = name.encode("utf-8", "surrogateescape")
    links = gid.links
    if not links.exists(encoded):
        return None
    info = links.get_info(encoded)
    if info.type != h5py.h5l.TYPE_HARD:
        group = h5py.Group(gid)
        raise ModelReadError(
            f"{joined(where, name) or '/'} {_link_kind(group, name, info.type)}; {NO_LINKS}"
        )
    return h5py.h5o.open(gid, encoded), int(info.u)


def open_group(gid: ObjectID, name: str, where: str) -> ObjectID | None:
    """The group ``gid`` holds as ``name`` through a hard link; ``None`` when there is none or
    it is no group."""
    found = open_hard(gid, name, where)
    if found is None or not isinstance(found[0], h5py.h5g.GroupID):
        return None
    return found[0]


def open_path(gid: ObjectID, segments: tuple[str, ...], where: str = "") -> ObjectID | None:
    """The group at ``segments`` below ``gid``, component by component through hard links
    only; ``None`` when some component is missing or no group."""
    current = gid
    for segment in segments:
        current = open_group(current, segment, where)
        if current is None:
            return None
        where = joined(where, segment)
    return current


def lookup_id(
    gid: ObjectID,
    path: str,
    where: str,
    groups: dict[tuple[str, ...], ObjectID | None] | None = None,
) -> tuple[ObjectID, int] | None:
    """``lookup`` on the group ``gid`` (at ``where``): the object at ``path`` below it and its
    address, through hard links only; ``None`` when there is none. ``groups`` keeps the groups
    opened on the way, so that the next path below the same groups opens them once."""
    parts = name_parts(path, where or "/")
    if len(parts) > MAX_DEPTH:
        raise ModelReadError(f"{where or '/'} names a path deeper than {MAX_DEPTH} levels")
    current, here = gid, where
    for depth, part in enumerate(parts[:-1]):
        key = tuple(parts[: depth + 1])
        if groups is not None and key in groups:
            found = groups[key]
        else:
            found = open_group(current, part, here)
            if groups is not None:
                groups[key] = found
        if found is None:
            return None
        current, here = found, joined(here, part)
    return open_hard(current, parts[-1], here)


#: A link as ``links_of`` lists it: its name, its kind (``h5py.h5l.TYPE_HARD``, ...) and, for
#: a hard link, the address of the object it leads to.
Link = tuple[str, int, int]


def links_of(gid: ObjectID) -> list[Link]:
    """The links ``gid`` holds, in name order; none followed yet."""
    links: list[Link] = []

    def collect(name: bytes, info: Any) -> bool:
        # h5py hands every call the same information object: copy what it says now.
        links.append((name.decode("utf-8", "surrogateescape"), info.type, int(info.u)))
        return len(links) > MAX_LINKS  # stops the iteration

    gid.links.iterate(collect, info=True)
    if len(links) > MAX_LINKS:
        raise ModelReadError(f"the file holds more than {MAX_LINKS} links to visit")
    return links


def open_listed(gid: ObjectID, link: Link, where: str) -> tuple[ObjectID, int]:
    """``open_hard`` for a link ``links_of`` listed: the object and its address."""
    name, kind, address = link
    budget = _budget_of(gid)
    budget.links += 1
    if budget.links > MAX_LINKS:
        raise ModelReadError(f"the file holds more than {MAX_LINKS} links to visit")
    if kind != h5py.h5l.TYPE_HARD:
        reason = _link_kind(h5py.Group(gid), name, kind)
        raise ModelReadError(f"{joined(where, name) or '/'} {reason}; {NO_LINKS}")
    return h5py.h5o.open(gid, name.encode("utf-8", "surrogateescape")), address


def hard_links(gid: ObjectID, where: str) -> list[tuple[str, int]]:
    """The names and addresses of what ``gid`` holds, in name order, every one a hard link (any
    other link is refused, as ``children`` refuses it); nothing is opened."""
    budget = _budget_of(gid)
    found: list[tuple[str, int]] = []
    refused: list[tuple[str, int]] = []

    def collect(name: bytes, info: Any) -> bool:
        text = name.decode("utf-8", "surrogateescape")
        if info.type == h5py.h5l.TYPE_HARD:
            found.append((text, int(info.u)))
        elif not refused:
            refused.append((text, info.type))
        budget.links += 1
        return budget.links > MAX_LINKS  # stops the iteration

    gid.links.iterate(collect, info=True)
    if budget.links > MAX_LINKS:
        raise ModelReadError(f"the file holds more than {MAX_LINKS} links to visit")
    if refused:
        name, kind = refused[0]
        reason = _link_kind(h5py.Group(gid), name, kind)
        raise ModelReadError(f"{joined(where, name) or '/'} {reason}; {NO_LINKS}")
    return found


def enter_group(visited: set[int], address: int, depth: int, where: str) -> None:
    """``Walk.enter`` by address: each group of a walk once, no deeper than ``MAX_DEPTH``."""
    if address in visited:
        raise ModelReadError(
            f"{where or '/'} is a group reached by a second name (a hard link); "
            "bncheck reads files in which each group has one name"
        )
    visited.add(address)
    if depth > MAX_DEPTH:
        raise ModelReadError(f"groups are nested deeper than {MAX_DEPTH} levels")


def has_attr_id(oid: ObjectID, key: str) -> bool:
    return bool(h5py.h5a.exists(oid, key.encode()))


def text_attr_id(oid: ObjectID, key: str) -> str | None:
    """``text_attr`` on an object identifier."""
    if not h5py.h5a.exists(oid, key.encode()):
        return None
    value = attr_value_id(oid, key)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str):
        return value
    raise ModelReadError(f"attribute {key!r} is not text")


def attr_value_id(oid: ObjectID, key: str) -> Any:
    """``attr_value`` on an object identifier: the value as h5py's attribute manager reads it,
    once its size is known to be modest and present in the file."""
    attribute = h5py.h5a.open(oid, key.encode())
    space = attribute.get_space()
    count = space.get_simple_extent_npoints()
    if count > MAX_ATTR_VALUES:
        raise ModelReadError(f"attribute {key!r} claims {count} values, more than bncheck reads")
    try:
        stored = attribute.get_storage_size()
    except RuntimeError:  # HDF5 reports an empty attribute's size as an error
        stored = 0
    if stored > _file_size(oid):
        raise ModelReadError(f"attribute {key!r} claims more bytes than the file holds")
    shape = attribute.shape
    dtype = attribute.dtype
    if shape is None:
        return h5py.Empty(dtype)
    memory_type = h5py.h5t.py_create(dtype)
    if dtype.subdtype is not None:
        dtype, inner = dtype.subdtype
        shape = shape + inner
    values = np.zeros(shape, dtype=dtype, order="C")
    attribute.read(values, mtype=memory_type)
    string = h5py.check_string_dtype(dtype)
    if string is not None and string.length is None:
        values = np.array(
            [item.decode("utf-8", "surrogateescape") for item in values.flat], dtype=dtype
        ).reshape(values.shape)
    return values[()] if values.ndim == 0 else values


def _file_size(oid: ObjectID, budget: _FileBudget | None = None) -> int:
    budget = budget or _budget_of(oid)
    if budget.file_size is None:
        budget.file_size = int(h5py.h5i.get_file_id(oid).get_filesize())
    return budget.file_size


def read_values_id(
    dataset: ObjectID, address: int, name: str, what: str | None = None
) -> np.ndarray:
    """``read_values`` on a dataset identifier opened by ``name`` (its path from the file's
    root), whose address its link gave; ``what`` names it in messages (``name`` by default)."""
    return _read_values(dataset, address, name, name if what is None else what, False)[0]


def _read_values(
    dataset: ObjectID, address: int, name: str, what: str, bn: bool
) -> tuple[np.ndarray, bool]:
    """``read_values_id``'s values and, for a BN array (``bn``), whether they are Keras's
    bfloat16 words. Each property is asked of HDF5 once: a ResNet's 212 arrays are read on
    every inspection."""
    if not isinstance(dataset, h5py.h5d.DatasetID):
        raise ModelReadError(f"{what} is not a dataset")
    space = dataset.get_space()
    count = space.get_simple_extent_npoints()
    if space.get_simple_extent_type() == h5py.h5s.NULL or count == 0:
        raise ModelReadError(f"{what} is empty")
    if count > MAX_BN_VALUES:
        raise ModelReadError(f"{what} claims {count} values, too many for a BatchNorm array")
    plist = dataset.get_create_plist()
    if plist.get_external_count() > 0 or plist.get_layout() == h5py.h5d.VIRTUAL:
        raise ModelReadError(
            f"{what} stores its values in another file; only the given file is read"
        )
    dtype = dataset.dtype
    bfloat16 = (
        dtype.itemsize == 2
        and (bn or dtype.kind not in "fiu")
        and text_attr_id(dataset, "dtype") == "bfloat16"
    )
    if dtype.kind not in "fiu" and not bfloat16:
        raise ModelReadError(f"{what} has non-numeric type {dtype}")
    budget = _budget_of(dataset)
    known = _read_before(budget, address, name, what)
    if known is not None:
        return known, bfloat16
    declared = count * dtype.itemsize
    stored = dataset.get_storage_size()
    file_size = _file_size(dataset, budget)
    if stored > file_size:
        raise ModelReadError(f"{what} claims {stored} stored bytes in a file of {file_size}")
    filtered = plist.get_nfilters() > 0
    limit = stored * (MAX_COMPRESSION if filtered else 1) + _SLACK_BYTES
    if declared > limit:
        how = f"compressed more than {MAX_COMPRESSION}:1" if filtered else "not stored"
        raise ModelReadError(
            f"{what} declares {declared} bytes of values but the file stores {stored} bytes "
            f"for it ({how}); refused before reading"
        )
    budget.read_bytes += declared
    if budget.read_bytes > MAX_READ_BYTES:
        raise ModelReadError(
            f"the file's arrays add up to more than {MAX_READ_BYTES >> 20} MiB; "
            "BatchNorm arrays are far smaller"
        )
    values = np.empty(space.shape, dtype=dtype)
    dataset.read(h5py.h5s.ALL, h5py.h5s.ALL, values)
    budget.arrays[address] = (name, values)
    return values, bfloat16


def read_bn_array_id(
    dataset: ObjectID, address: int, name: str, what: str | None = None
) -> np.ndarray:
    """``read_bn_array`` on a dataset identifier (``read_values_id``)."""
    values, bfloat16 = _read_values(dataset, address, name, name if what is None else what, True)
    return _as_float(values, bfloat16)


def parse_json_config(text: str | bytes, what: str) -> dict[str, Any]:
    """A Keras JSON configuration, within ``MAX_JSON_BYTES`` and ``MAX_JSON_DEPTH``."""
    if len(text) > MAX_JSON_BYTES:
        raise ModelReadError(f"{what} is larger than {MAX_JSON_BYTES >> 20} MiB")
    try:
        config = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelReadError(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelReadError(f"{what} is not a JSON object")
    if json_depth(config) > MAX_JSON_DEPTH:
        raise ModelReadError(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return config


def json_depth(value: object) -> int:
    """How deeply JSON containers nest in ``value``, walked without recursion; only containers
    are stacked (a configuration is mostly scalars)."""
    if not isinstance(value, (dict, list)):
        return 0
    deepest = 0
    stack: list[tuple[dict[str, object] | list[object], int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > deepest:
            deepest = depth
        if depth > MAX_JSON_DEPTH:
            continue
        items = node.values() if isinstance(node, dict) else node
        below = depth + 1
        for item in items:
            if isinstance(item, (dict, list)):
                stack.append((item, below))
    return deepest


def read_capped(stream: IO[bytes], limit: int, what: str) -> bytes:
    """All of ``stream``, refused as soon as it passes ``limit`` bytes (whatever size its
    container declared)."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ModelReadError(f"{what} is larger than {limit >> 20} MiB")
    return data


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
