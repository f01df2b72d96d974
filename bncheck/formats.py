"""The formats bncheck reads: one entry each, and everything that follows from them.

Detection (``bncheck.readers.detect``), folder scans, reading, the probe's choice of runtime and
the extra it needs, what ``recalibrate`` writes, the pre-commit hook's file pattern and the
formats table in ``docs/formats.md`` all come from ``FORMATS``. A new format is one reader
module, one entry here and its tests.

Importing this module imports no reader and no framework: readers and runtimes are named as
``"module:function"`` and loaded when a file of theirs is read or run.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
import zipfile
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Any

from bncheck.errors import ModelReadError
from bncheck.records import record

#: HDF5 allows a user block before the superblock: the signature sits at 0, 512, 1024, 2048, ...
_HDF5_OFFSETS = (0, *(512 << k for k in range(12)))
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: A checkpoint's data shard, ``<prefix>.data-00000-of-00001``; the prefix may be empty.
_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")
#: Enough of a file's start for every signature below.
_HEAD_BYTES = 16
#: The most members a model archive may declare. A PyTorch archive holds one per storage plus a
#: few (PyTorch's largest state dicts have about 100,000 tensors), a ``.keras`` archive a handful.
MAX_ZIP_ENTRIES = 200_000
#: The largest central directory read: 60 bytes a member in PyTorch's archives, so 12 MB for
#: 200,000 members. zipfile parses all of it into objects of about 400 bytes a member.
MAX_ZIP_DIRECTORY = 16 << 20
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def check_zip_directory(path: str | os.PathLike[str]) -> None:
    """Refuses (``ModelReadError``) a zip archive whose end record declares more members or a
    larger central directory than any model holds, before zipfile parses the directory into
    objects: a 70 MB file of 1.5 million empty members would cost zipfile 10 s and 600 MB. Finds
    the end record as zipfile does; an archive without one is left to zipfile to refuse."""
    with open(path, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        tail_size = min(size, _EOCD.size + 0xFFFF)
        handle.seek(size - tail_size)
        tail = handle.read(tail_size)
        at = len(tail) - _EOCD.size
        if tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\x00\x00":
            at = tail.rfind(b"PK\x05\x06")
        if at < 0 or at + _EOCD.size > len(tail):
            return
        _, _, _, _, entries, directory, _, _ = _EOCD.unpack_from(tail, at)
        end = size - tail_size + at
        if end >= _EOCD64_LOCATOR.size:
            handle.seek(end - _EOCD64_LOCATOR.size)
            locator = handle.read(_EOCD64_LOCATOR.size)
            signature, _, offset, _ = _EOCD64_LOCATOR.unpack(locator)
            if signature == b"PK\x06\x07" and 0 <= offset <= size - _EOCD64.size:
                handle.seek(offset)
                record = _EOCD64.unpack(handle.read(_EOCD64.size))
                if record[0] == b"PK\x06\x06":
                    entries, directory = max(entries, record[7]), max(directory, record[8])
    if entries > MAX_ZIP_ENTRIES or directory > MAX_ZIP_DIRECTORY:
        raise ModelReadError(
            f"zip archive declares {entries} members in a central directory of {directory} "
            f"bytes; no model has more than {MAX_ZIP_ENTRIES} members or "
            f"{MAX_ZIP_DIRECTORY >> 20} MB of directory"
        )


def open_zip(path: str | os.PathLike[str]) -> zipfile.ZipFile:
    """``zipfile.ZipFile(path)`` for reading, once ``check_zip_directory`` accepts it."""
    check_zip_directory(path)
    return zipfile.ZipFile(path)


class Candidate:
    """A path being recognised: each fact about it is looked up once, when first asked for."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.name = self.path.name.lower()

    @cached_property
    def is_dir(self) -> bool:
        return self.path.is_dir()

    @cached_property
    def is_file(self) -> bool:
        return self.path.is_file()

    @cached_property
    def size(self) -> int:
        return self.path.stat().st_size if self.is_file else 0

    @cached_property
    def head(self) -> bytes:
        """The file's first bytes; empty for anything but a regular file."""
        if not self.is_file:
            return b""
        with open(self.path, "rb") as handle:
            return handle.read(_HEAD_BYTES)

    @cached_property
    def zip_names(self) -> list[str] | None:
        """The members of a zip archive; ``None`` for another file or an archive zipfile cannot
        list (the reader then says why)."""
        if not self.is_zip:
            return None
        try:
            with zipfile.ZipFile(self.path) as archive:
                return archive.namelist()
        except Exception:  # a corrupt archive may fail anywhere in zipfile
            return None

    @cached_property
    def zip_refusal(self) -> str | None:
        """Why a file that starts like a zip archive is too large an archive to list (see
        ``check_zip_directory``); ``None`` for any other file."""
        if self.head[:4] not in _ZIP_MAGICS:
            return None
        try:
            check_zip_directory(self.path)
        except ModelReadError as exc:
            return str(exc)
        return None

    @cached_property
    def is_zip(self) -> bool:
        """A zip archive small enough to list: one that is not is no format's."""
        return self.head[:4] in _ZIP_MAGICS and self.zip_refusal is None

    @cached_property
    def is_hdf5(self) -> bool:
        if not self.head:
            return False
        with open(self.path, "rb") as handle:
            for offset in _HDF5_OFFSETS:
                handle.seek(offset)
                if handle.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE:
                    return True
        return False


Predicate = Callable[[Candidate], bool]


@record
class Runtime:
    """What runs a model for the probe, and the optional part of bncheck that it needs."""

    name: str
    """As ``Format.runtime`` names it."""
    called: str
    """What runs the model, as the docs say."""
    extra: str
    """The extra (``pip install "bncheck[EXTRA]"``, as in pyproject.toml) the runtime needs."""
    probe: str
    """``"module:function"`` probing a file: ``(path, options, step, untouched) ->
    ProbeResult``."""


@record
class Format:
    """One format bncheck reads."""

    name: str
    """The format's key in ``FORMATS``."""
    called: str
    """What messages call a file of this format, e.g. "a .keras archive"."""
    framework: str
    """The framework that writes it, as the docs name it."""
    recognise: Predicate
    """Whether a path is a file or folder of this format. Formats are asked in ``FORMATS``'
    order, and the first that answers yes reads the path. Its docstring is what the formats
    table in the docs says."""
    reader: str
    """``"module:function"`` describing a path of this format as a ``ModelDescription``."""
    suffixes: tuple[str, ...] = ()
    """Lower-case name endings that make a file a model of this format whatever its content:
    folder scans report a broken one, and the pre-commit hook checks it."""
    found_in_folders: Predicate | None = None
    """Whether a file without one of ``suffixes``, found in a folder scan, is a model of this
    format; ``None`` when only its suffix (or, for folders, ``recognise``) says so."""
    stands_for: Callable[[Path], bool] | None = None
    """Whether a file is part of a model of this format that another file stands for (a shard
    its index names): folder scans leave such files out."""
    runtime: str | None = None
    """The key in ``RUNTIMES`` of what runs it for the probe; ``None`` when nothing does."""
    not_run: str = ""
    """Why the probe does not run a file of this format, when ``runtime`` is ``None``."""
    writer: str | None = None
    """What ``bncheck recalibrate`` writes it with; ``None`` when it does not write the format."""
    not_written: str = ""
    """What to do instead, when ``writer`` is ``None``: ``recalibrate`` says it."""
    runs_with_architecture: bool = False
    """Whether a weights-only file of this format runs in Keras once ``--architecture`` names
    a ``.keras`` or full ``.h5`` file of the same network
    (``bncheck.probe.runtimes.architecture``)."""


def _is_savedmodel(candidate: Candidate) -> bool:
    """a folder holding `saved_model.pb` or `saved_model.pbtxt`"""
    return candidate.is_dir and any(
        (candidate.path / name).is_file() for name in ("saved_model.pb", "saved_model.pbtxt")
    )


def _is_checkpoint(candidate: Candidate) -> bool:
    """a folder holding a `checkpoint` or `.index` file; that file, a data shard beside its index,
    or the prefix they share"""
    path = candidate.path
    if candidate.is_dir:
        return (path / "checkpoint").is_file() or any(path.glob("*.index"))
    if not path.exists():  # a checkpoint named by its prefix
        return Path(f"{path}.index").is_file()
    if not candidate.is_file:
        return False
    if path.name == "checkpoint" or path.name.endswith(".index"):
        return True
    shard_of = _DATA_SHARD.sub(".index", str(path))
    return bool(_DATA_SHARD.search(path.name)) and Path(shard_of).is_file()


def _is_keras_shards_index(candidate: Candidate) -> bool:
    """a `.json` file whose `weight_map` lists the shards"""
    if not candidate.name.endswith(".json"):
        return False  # decided without importing the reader, and h5py, for every other file
    from bncheck.readers.keras import keras3_shards

    return keras3_shards.is_index(candidate.path)


def _is_keras_shard(path: Path) -> bool:
    if not path.name.endswith(".weights.h5"):
        return False
    from bncheck.readers.keras import keras3_shards

    return keras3_shards.index_of_shard(path) is not None


def _torch_member(candidate: Candidate) -> str | None:
    """The main pickle of a PyTorch zip archive (one without a Keras ``config.json``)."""
    from bncheck.readers.framework_signatures import data_pickle_member

    names = candidate.zip_names
    if names is None or "config.json" in names:
        return None
    return data_pickle_member(names)


def _is_torchscript(candidate: Candidate) -> bool:
    """a zip archive holding `<name>/data.pkl` and `<name>/constants.pkl` or `<name>/code/`, no
    `config.json`"""
    member = _torch_member(candidate)
    if member is None:
        return False
    top = member.split("/", 1)[0]
    names = candidate.zip_names or []
    return f"{top}/constants.pkl" in names or any(name.startswith(f"{top}/code/") for name in names)


def _is_pytorch(candidate: Candidate) -> bool:
    """a zip archive holding `<name>/data.pkl` and no `config.json`, or the legacy `torch.save`
    pickle's magic number"""
    from bncheck.readers.framework_signatures import LEGACY_MAGIC

    return _torch_member(candidate) is not None or candidate.head.startswith(LEGACY_MAGIC)


def _is_zip(candidate: Candidate) -> bool:
    """any other zip archive (one without `config.json` is reported broken)"""
    return candidate.is_zip


def _is_keras_archive(candidate: Candidate) -> bool:
    return "config.json" in (candidate.zip_names or ())


def _is_hdf5(candidate: Candidate) -> bool:
    """the HDF5 signature, at 0 or after a user block"""
    return candidate.is_hdf5


def _has_safetensors_header(candidate: Candidate) -> bool:
    from bncheck.readers.framework_signatures import is_safetensors

    return is_safetensors(candidate.head, candidate.size)


def _is_safetensors(candidate: Candidate) -> bool:
    """an 8-byte header length followed by a JSON header, or the suffix"""
    return _named(candidate, ".safetensors") or _has_safetensors_header(candidate)


def _is_onnx(candidate: Candidate) -> bool:
    """the suffix (the reader checks the protobuf)"""
    return _named(candidate, ".onnx")


def _named(candidate: Candidate, suffix: str) -> bool:
    """A non-empty file named like the format: its reader says whether it really is one."""
    return candidate.name.endswith(suffix) and bool(candidate.head)


#: What to do with a Keras or TensorFlow file that holds weights only.
WEIGHTS_ONLY = (
    "it holds weights only: build the model in Keras, load_weights(FILE), and save it as .keras"
)
#: What the probe and recalibrate say of a Keras weights-only file given without
#: ``--architecture`` (``Format.runs_with_architecture``).
NEEDS_ARCHITECTURE = (
    "a weights-only file holds no architecture to run: pass --architecture MODEL, the .keras or "
    "full .h5 file of the same network"
)
#: What recalibrate says of the formats of other frameworks.
_INSPECTED_ONLY = "it is checked by 'bncheck inspect' (and --probe) only"

RUNTIMES = {
    runtime.name: runtime
    for runtime in (
        Runtime("keras", "Keras", "tensorflow", "bncheck.probe.runner:probe_keras_file"),
        Runtime("savedmodel", "TensorFlow", "tensorflow", "bncheck.probe.runner:probe_savedmodel"),
        Runtime("onnxruntime", "onnxruntime", "onnx", "bncheck.probe.runtimes.onnx_model:probe"),
        Runtime(
            "torchscript",
            "torch.jit, with --unsafe",
            "torch",
            "bncheck.probe.runtimes.torchscript_model:probe",
        ),
    )
}

#: Every format, in the order detection asks them.
FORMATS = {
    entry.name: entry
    for entry in (
        Format(
            name="savedmodel",
            called="a SavedModel directory",
            framework="TensorFlow",
            recognise=_is_savedmodel,
            reader="bncheck.readers.tensorflow.savedmodel:read",
            runtime="savedmodel",
            writer="savedmodel",
        ),
        Format(
            name="checkpoint",
            called="a checkpoint",
            framework="TensorFlow",
            recognise=_is_checkpoint,
            reader="bncheck.readers.tensorflow.checkpoint:read",
            not_run="a checkpoint holds no architecture to run",
            not_written=WEIGHTS_ONLY,
        ),
        Format(
            name="keras-shards",
            called="the .json index of sharded weights",
            framework="Keras",
            recognise=_is_keras_shards_index,
            reader="bncheck.readers.keras.keras3_shards:read",
            found_in_folders=_is_keras_shards_index,
            stands_for=_is_keras_shard,
            not_run="a weights-only file holds no architecture to run by itself",
            not_written=(
                "sharded weights are not written back: load them into the model (load_weights), "
                "save_weights to one .weights.h5 file, and recalibrate that with --architecture"
            ),
            runs_with_architecture=True,
        ),
        Format(
            name="torchscript",
            called="a TorchScript archive",
            framework="PyTorch",
            recognise=_is_torchscript,
            reader="bncheck.readers.pytorch.torch_files:read",
            suffixes=(".pt", ".pth"),
            found_in_folders=_is_torchscript,
            runtime="torchscript",
            writer="torchscript",
        ),
        Format(
            name="pytorch",
            called="a PyTorch file",
            framework="PyTorch",
            recognise=_is_pytorch,
            reader="bncheck.readers.pytorch.torch_files:read",
            suffixes=(".pt", ".pth"),
            found_in_folders=_is_pytorch,
            not_run=(
                "a state dict holds no architecture to run, and a pickled model needs its "
                "classes' code, which bncheck never runs: export it to ONNX or TorchScript to "
                "probe it"
            ),
            writer="pytorch",
        ),
        Format(
            name="keras",
            called="a .keras archive",
            framework="Keras",
            recognise=_is_zip,  # any other zip archive: the reader says what it lacks
            reader="bncheck.readers.keras.keras_archive:read",
            suffixes=(".keras",),
            found_in_folders=_is_keras_archive,
            runtime="keras",
            writer="keras",
        ),
        Format(
            name="hdf5",
            called="an HDF5 file",
            framework="Keras",
            recognise=_is_hdf5,
            reader="bncheck.readers.keras.hdf5_file:read",
            suffixes=(".h5", ".hdf5"),
            found_in_folders=_is_hdf5,
            runtime="keras",
            writer="keras",
            runs_with_architecture=True,
        ),
        Format(
            name="safetensors",
            called="a safetensors file",
            framework="safetensors",
            recognise=_is_safetensors,
            reader="bncheck.readers.pytorch.safetensors:read",
            suffixes=(".safetensors",),
            found_in_folders=_has_safetensors_header,
            not_run="a safetensors file holds tensors only, no architecture to run",
            writer="safetensors",
        ),
        Format(
            name="onnx",
            called="an ONNX model",
            framework="ONNX",
            recognise=_is_onnx,
            reader="bncheck.readers.onnx.onnx_graph:read",
            suffixes=(".onnx",),
            runtime="onnxruntime",
            writer="onnx",
        ),
    )
}


def load(reference: str) -> Any:
    """The function a ``"module:function"`` reference names, importing its module now."""
    module, _, function = reference.partition(":")
    return getattr(importlib.import_module(module), function)


def model_suffixes() -> tuple[str, ...]:
    """Every format's suffixes, each once, in registry order."""
    return tuple(dict.fromkeys(suffix for entry in FORMATS.values() for suffix in entry.suffixes))


def precommit_pattern() -> str:
    """The ``files:`` pattern of ``.pre-commit-hooks.yaml``: any name with a model suffix."""
    endings = "|".join(re.escape(suffix.lstrip(".")) for suffix in model_suffixes())
    return rf"(?i)\.({endings})$"


def writable() -> list[Format]:
    """The formats ``bncheck recalibrate`` writes."""
    return [entry for entry in FORMATS.values() if entry.writer is not None]


def writable_models() -> str:
    """The files ``bncheck recalibrate`` writes, by their main suffix: ".keras and .h5 models"."""
    suffixes = list(dict.fromkeys(entry.suffixes[0] for entry in writable() if entry.suffixes))
    # Keras's formats first, as the command's help lists them.
    suffixes.sort(key=lambda suffix: suffix not in (".keras", ".h5"))
    listed = ", ".join(suffixes[:-1]) + f" and {suffixes[-1]}" if len(suffixes) > 1 else suffixes[0]
    # Formats that are folders, not files: "a SavedModel directory" -> "SavedModel directories".
    folders = [
        entry.called.split(" ", 1)[1].removesuffix("y") + "ies"
        for entry in writable()
        if not entry.suffixes
    ]
    return "".join([f"{listed} models", *(f", and {folder}" for folder in folders)])
