"""Writing a model as a copy of itself with some bytes replaced: what the ONNX, PyTorch,
safetensors and tensor-bundle writers share.

Each writer reads MODEL with bncheck's own reader, finds the bytes that hold the statistics to
write (and the checksums that cover them), and hands them over as ``Patch`` objects: an offset
and bytes of the same length as those they replace. ``write_patched`` then

- refuses OUT when it is MODEL, and MODEL or OUT when either is a link;
- copies MODEL to a temporary file beside OUT and writes the patches into the copy;
- checks that the copy equals MODEL byte for byte outside the patches, that it reads back, with
  bncheck's reader, as MODEL with the new statistics (the writer's ``check``), and that MODEL's
  SHA-256 has not changed;
- and only then moves the copy over OUT with ``os.replace``.

Every failure is one line (``WriteError``, exit code 3) and leaves OUT as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import BNLayer
from bncheck.recalibrate.write import WriteError, _atomic_target, _compare, _sha256
from bncheck.records import record

#: The statistics to write, by layer path: ``(mean, variance)`` as the framework stores them.
Statistics = Mapping[str, tuple[np.ndarray, np.ndarray]]

#: NumPy type of each stored element type bncheck writes (bfloat16 as its 16 bits).
_FLOAT_TYPES = {"float64": "f8", "float32": "f4", "float16": "f2", "bfloat16": "u2"}


@record
class Patch:
    """Bytes of the copy to replace."""

    offset: int
    """Where in the file they start."""
    data: bytes
    """What they become: as many bytes as they replace."""
    what: str
    """What they hold, for messages: ``layer1.0.bn1 running_mean``."""

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def encode(
    values: np.ndarray, dtype: str, count: int, what: str, big_endian: bool = False
) -> bytes:
    """``values`` stored as ``count`` elements of ``dtype`` (a float type), as given: cast to the
    stored type (bfloat16 rounded to nearest even, as Keras and PyTorch round)."""
    if dtype not in _FLOAT_TYPES:
        raise WriteError(f"{what} is stored as {dtype}; bncheck writes floating-point statistics")
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise WriteError(f"{what}: the values to write are not numbers") from None
    if array.size != count:
        raise WriteError(f"{what} holds {count} values; {array.size} were given to write")
    order = ">" if big_endian else "<"
    if dtype == "bfloat16":
        bits = array.astype(np.float32).view(np.uint32).astype(np.uint64)
        bits += 0x7FFF + ((bits >> 16) & 1)
        return (bits >> 16).astype(f"{order}u2").tobytes()
    return array.astype(f"{order}{_FLOAT_TYPES[dtype]}").tobytes()


def check_layers(statistics: Statistics, known: Sequence[str], source: str) -> None:
    """Every layer to write is one the reader found in MODEL."""
    missing = [path for path in statistics if path not in known]
    if missing:
        raise WriteError(
            f"{source} has no BatchNorm layer {missing[0]!r} with stored statistics to write"
        )


def refuse_links(source: str, target: str) -> None:
    """OUT is not MODEL, and neither is a link: the writer changes the file it read, and only
    OUT."""
    for path, role in ((source, "the model"), (target, "the output")):
        if os.path.islink(path):
            raise WriteError(f"{path} ({role}) is a symbolic link; bncheck writes no link")
    if os.path.exists(target) and os.path.samefile(source, target):
        raise WriteError(f"refusing to overwrite {source} (the model itself): name another OUT")
    if os.path.exists(target) and not os.path.isfile(target):
        raise WriteError(f"{target} exists and is not a file")


def check_disjoint(patches: Sequence[Patch], size: int) -> list[tuple[int, int]]:
    """The patches' byte ranges, sorted: inside the file and none overlapping another."""
    ordered = sorted(patches, key=lambda patch: patch.offset)
    for first, second in zip(ordered, ordered[1:], strict=False):
        if second.offset < first.end:
            raise WriteError(f"{first.what} and {second.what} share bytes in the file")
    if ordered and (ordered[0].offset < 0 or ordered[-1].end > size):
        raise WriteError(f"{ordered[-1].what} lies outside the file")
    return [(patch.offset, patch.end) for patch in ordered]


def apply(path: str, patches: Sequence[Patch]) -> None:
    """Write the patches into the file at ``path``."""
    with open(path, "r+b") as handle:
        for patch in patches:
            handle.seek(patch.offset)
            handle.write(patch.data)


def compare_outside(source: str, written: str, spans: Sequence[tuple[int, int]], what: str) -> None:
    """``written`` holds ``source``'s bytes except inside ``spans``."""
    with open(source, "rb") as original, open(written, "rb") as copy:
        _compare(original, copy, list(spans), what)


@record
class Stored:
    """The bytes written for one array, and how they decode."""

    data: bytes
    dtype: str
    big_endian: bool = False


def check_read_back(
    layers: Sequence[BNLayer], written: Mapping[str, tuple[Stored, Stored]]
) -> None:
    """The layers bncheck's reader found in the written file hold, bit for bit, the statistics
    written: each array read back decodes as the bytes written decode."""
    from bncheck.readers.codecs import tensor_bytes

    found = {layer.path: layer for layer in layers}
    for path, stored in written.items():
        layer = found.get(path)
        if layer is None:
            raise WriteError(
                f"{path} is not a BatchNorm layer of the written file; nothing written"
            )
        for name, back, expected in zip(
            ("mean", "variance"), (layer.moving_mean, layer.moving_variance), stored, strict=True
        ):
            decoded = tensor_bytes.decode(expected.data, expected.dtype, expected.big_endian)
            array = np.asarray(back).ravel()
            if array.size != decoded.size or array.astype(decoded.dtype).tobytes() != (
                decoded.tobytes()
            ):
                raise WriteError(
                    f"{path}'s {name} does not read back as the values written; nothing written"
                )


def write_patched(
    source: str,
    target: str,
    patches: Callable[[], list[Patch]],
    check: Callable[[str], None],
) -> None:
    """Write ``target`` as ``source`` with ``patches()`` applied, verified (see the module's
    docstring) by comparing bytes and by ``check(copy)``, which reads the copy back."""
    with guarded(target):
        refuse_links(source, target)
        before = _sha256(source)
        found = patches()
        spans = check_disjoint(found, os.path.getsize(source))
        with _atomic_target(source, target) as temporary:
            shutil.copyfile(source, temporary)
            apply(temporary, found)
            compare_outside(source, temporary, spans, "the written file")
            check(temporary)
            if _sha256(source) != before:
                raise WriteError(f"{source} changed while {target} was written; nothing written")


@contextlib.contextmanager
def guarded(target: str) -> Iterator[None]:
    """Every failure inside, one line: a ``WriteError`` naming ``target``."""
    from bncheck.readers import one_line

    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise WriteError(f"cannot write {target}: {exc.strerror or exc}") from None
    except ModelReadError as exc:
        raise WriteError(f"cannot write {target}: {exc}") from None
    except RecursionError:
        raise WriteError(f"cannot write {target}: the model is nested too deeply") from None
    except Exception as exc:  # a hostile file may break a parser anywhere; never a traceback
        raise WriteError(f"cannot write {target}: {one_line(exc)}") from None


@contextlib.contextmanager
def atomic_folder(source: str, target: str) -> Iterator[str]:
    """A new folder beside ``target`` that becomes ``target`` (which must not exist) when the
    block succeeds, with ``source``'s permissions less setuid, setgid, sticky and writing by
    others; removed otherwise."""
    import tempfile

    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(parent):
        raise WriteError(f"cannot write {target}: no such directory {parent}")
    if os.path.lexists(target):
        raise WriteError(f"{target} exists: name a new folder for the written SavedModel")
    temporary = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=parent)
    try:
        yield temporary
        os.chmod(temporary, stat.S_IMODE(os.stat(source).st_mode) & 0o755)
        os.rename(temporary, target)
    finally:
        if os.path.isdir(temporary):
            shutil.rmtree(temporary, ignore_errors=True)


#: Protocol buffer wire types.
VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5


@record
class WireField:
    """One field of a serialized protocol buffer message, where it lies in the bytes."""

    number: int
    wire_type: int
    start: int
    """First byte of the value (of a length-delimited field: of its payload)."""
    end: int


def wire_fields(
    data: bytes | memoryview, start: int, end: int, limit: int | None = None
) -> list[WireField]:
    """The fields of the message serialized in ``data[start:end]``, in the order written. A
    message of more than ``limit`` fields is refused before they are all walked: the parsed
    message says how many it holds, and unknown or repeated fields beyond them would cost time
    and memory in proportion to the file."""
    fields: list[WireField] = []
    position = start
    while position < end:
        if limit is not None and len(fields) >= limit:
            raise WriteError(
                f"a protocol buffer message holds more than the {limit} fields it was read "
                "with (unknown or repeated fields); not written"
            )
        tag, position = _varint(data, position, end)
        wire_type = tag & 7
        value_start = position
        if wire_type == VARINT:
            _, position = _varint(data, position, end)
        elif wire_type == FIXED64:
            position += 8
        elif wire_type == FIXED32:
            position += 4
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = _varint(data, position, end)
            position = value_start + length
        else:
            raise WriteError(f"protocol buffer wire type {wire_type}, which no model uses")
        if position > end:
            raise WriteError("a protocol buffer field runs past its message")
        fields.append(WireField(tag >> 3, wire_type, value_start, position))
    return fields


def _varint(data: bytes | memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while shift < 64 and position < end:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise WriteError("a protocol buffer number runs past its message")
