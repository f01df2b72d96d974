"""Keras 3 ``.keras`` archives: ``config.json`` plus ``model.weights.h5`` in a zip file.

The weights file is read in place inside the archive (Keras stores it uncompressed), touching only
the BatchNorm datasets, so inspection time does not grow with the size of the other weights. A
compressed one is inflated to a temporary file first, refused once it passes
``max_inflated_size``; ``config.json`` is refused past ``MAX_JSON_BYTES``, counted as it inflates,
whatever size the archive declares. A member zipfile cannot read (a bad CRC, deflate64, an
encrypted one) is one line, as is an archive that names two members alike.

``saving_lib.save_model(..., weights_format="npz")`` writes ``model.weights.npz`` instead: one
pickled dict of Keras variable objects per layer (``NpzIOStore``), which only unpickling, that is
running code named by the file, can read. bncheck refuses it, as Keras 3.15 does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from typing import IO

import h5py

from bncheck import formats
from bncheck.errors import ModelReadError
from bncheck.model import BNLayer, IncompleteLayer, ModelDescription
from bncheck.readers.codecs.h5util import (
    MAX_JSON_BYTES,
    FileWindow,
    ObjectID,
    budgeted,
    hard_links,
    joined,
    open_group,
    open_hard,
    parse_json_config,
    read_capped,
    text_attr_id,
)
from bncheck.readers.keras import keras3_layout
from bncheck.readers.keras.keras3_layout import KnownLayer
from bncheck.readers.keras.keras_config import (
    BN_CLASSES,
    LayerConfig,
    bn_settings,
    holds_no_layer,
    renorm,
    walk_layers,
)

CONFIG_MEMBER = "config.json"
WEIGHTS_MEMBER = "model.weights.h5"
NPZ_WEIGHTS_MEMBER = "model.weights.npz"
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")

#: A compressed weights member may inflate to this much whatever its compressed size...
MIN_INFLATED_LIMIT = 64 << 20
#: ... and beyond it to this many times its compressed size: weights hardly compress, and
#: Keras stores them uncompressed.
MAX_WEIGHTS_COMPRESSION = 100

#: What zipfile raises for a member it cannot read: a bad CRC or stream, an unsupported
#: compression (deflate64) or encryption.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError)
_COPY_CHUNK = 1 << 20
_HDF5_BUFFER = 16 << 10


def read(path: str) -> ModelDescription:
    try:
        return _read(path)
    except ZIP_ERRORS as exc:
        raise ModelReadError(f"corrupt zip archive ({exc})") from None


def members_by_name(archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name; two members of one name (readers would disagree on which
    one is meant) are refused."""
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.filename in members:
            raise ModelReadError(f"the archive holds two members named {info.filename!r}")
        members[info.filename] = info
    return members


def _check_inflated_sizes(members: Iterable[zipfile.ZipInfo], archive_size: int) -> None:
    """Every member but the configuration and the weights (which have limits of their own)
    inflates within the ratio weights may, and all of them together within that ratio of the
    archive: Keras extracts every member, assets included, and recalibrate copies them. zipfile
    stops a member at its declared size, so declared sizes bound the work."""
    total = 0
    for info in members:
        if info.filename in (CONFIG_MEMBER, WEIGHTS_MEMBER):
            continue
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > max_inflated_size(info):
            raise ModelReadError(
                f"member {info.filename!r} of the .keras archive would inflate to "
                f"{info.file_size} bytes from {info.compress_size} (at most "
                f"{MAX_WEIGHTS_COMPRESSION}x is read)"
            )
        total += info.file_size
    limit = max(MIN_INFLATED_LIMIT, MAX_WEIGHTS_COMPRESSION * archive_size)
    if total > limit:
        raise ModelReadError(
            f"the .keras archive's members would inflate to {total} bytes from {archive_size} "
            f"(at most {MAX_WEIGHTS_COMPRESSION}x is read)"
        )


def read_config(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, object]:
    """``config.json``, refused before inflating it when it declares more than
    ``MAX_JSON_BYTES``, and as it inflates past that when the declared size lies."""
    if info.file_size > MAX_JSON_BYTES:
        raise ModelReadError(f"{CONFIG_MEMBER} is larger than {MAX_JSON_BYTES >> 20} MiB")
    with archive.open(info) as member:
        text = read_capped(member, MAX_JSON_BYTES, CONFIG_MEMBER)
    return parse_json_config(text, CONFIG_MEMBER)


def max_inflated_size(info: zipfile.ZipInfo) -> int:
    """The most a compressed member may inflate to."""
    return max(MIN_INFLATED_LIMIT, MAX_WEIGHTS_COMPRESSION * info.compress_size)


def inflate(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: IO[bytes]) -> None:
    """Copy a member's bytes to ``target``, refused once they pass ``max_inflated_size`` (or
    the size the archive declares): no bomb fills the disk or the memory."""
    limit = min(max_inflated_size(info), info.file_size)
    written = 0
    with archive.open(info) as member:
        while chunk := member.read(_COPY_CHUNK):
            written += len(chunk)
            if written > limit:
                raise ModelReadError(
                    f"{info.filename} inflates past {limit} bytes (it is stored compressed in "
                    f"{info.compress_size}, declared {info.file_size}; at most "
                    f"{MAX_WEIGHTS_COMPRESSION}x is read); store it uncompressed, as Keras does"
                )
            target.write(chunk)


def _read(path: str) -> ModelDescription:
    try:
        archive = formats.open_zip(path)
    except zipfile.BadZipFile as exc:
        raise ModelReadError(f"not a valid zip archive ({exc})") from None
    with archive:
        members = members_by_name(archive)
        _check_inflated_sizes(members.values(), os.path.getsize(path))
        if CONFIG_MEMBER not in members:
            raise ModelReadError("zip archive has no config.json, so it is not a .keras model")
        if WEIGHTS_MEMBER not in members and NPZ_WEIGHTS_MEMBER in members:
            raise ModelReadError(
                f"the .keras archive holds its weights as {NPZ_WEIGHTS_MEMBER} "
                "(weights_format='npz'): pickled Keras variables that only unpickling, which runs "
                "code from the file, can read; bncheck does not (Keras 3.15 refuses them too), "
                "so save the model again with the default weights format"
            )
        if WEIGHTS_MEMBER not in members:
            raise ModelReadError(
                f"the .keras archive has no {WEIGHTS_MEMBER}: its weights are missing"
            )
        config = read_config(archive, members[CONFIG_MEMBER])
        notes: list[str] = []
        weights_info = members[WEIGHTS_MEMBER]
        if weights_info.compress_type != zipfile.ZIP_STORED:
            notes.append(f"{WEIGHTS_MEMBER} is compressed inside the archive, so reading is slower")
        with (
            _open_member(path, archive, weights_info) as fileobj,
            h5py.File(fileobj, "r") as h5,
            budgeted(),
        ):
            layers, incomplete = describe(h5, config, notes)
    return ModelDescription(
        path=path,
        format="keras",
        layers=tuple(layers),
        notes=tuple(notes),
        incomplete=tuple(incomplete),
    )


def describe(
    h5: h5py.File, config: dict[str, object], notes: list[str]
) -> tuple[list[BNLayer], list[IncompleteLayer]]:
    """Map a Keras 3 configuration onto its weights file and read every BN layer's arrays; the
    layers whose arrays the file lacks in part are returned apart.

    The configuration says where each layer's variables are, so only the groups on the way to
    the BatchNorm layers are opened, and the scan for BatchNorm layers it does not describe
    passes by the layers of Keras's own classes that hold no other layer."""
    root = h5.id
    layers: list[BNLayer] = []
    incomplete: list[IncompleteLayer] = []
    claimed: set[tuple[str, ...]] = set()
    known: dict[tuple[str, ...], KnownLayer] = {}
    leaves: set[tuple[str, ...]] = set()
    relocated = []
    groups = _Groups(root)
    for layer in walk_layers(config):
        known[layer.saving_path] = KnownLayer(layer.path, layer.trainable)
        if layer.saving_path and holds_no_layer(layer):
            leaves.add(layer.saving_path)
        if layer.class_name not in BN_CLASSES:
            continue
        found = _layer_group(groups, layer)
        if found is None:
            notes.append(
                f"{'/'.join(layer.path)} has no saved variables (the layer was never built)"
            )
            continue
        segments, vars_group = found
        if segments != layer.saving_path:
            relocated.append("/".join(layer.path))
        claimed.add(segments)
        read = _bn_layer(layer, segments, vars_group)
        if isinstance(read, IncompleteLayer):
            incomplete.append(read)
        else:
            layers.append(read)
    if relocated:
        notes.append(
            f"{len(relocated)} layer(s) found by their saved name, not where Keras's group naming "
            f"puts them: {', '.join(relocated[:3])}"
        )
    extra = list(
        keras3_layout.scan_for_batchnorm(root, frozenset(claimed), known, frozenset(leaves))
    )
    extra = [dataclasses.replace(layer, variance_estimator="biased") for layer in extra]
    if extra:
        notes.append(
            f"{len(extra)} BatchNorm layer(s) found by their variables inside layers the "
            "configuration does not describe; their settings are unknown"
        )
    return layers + extra, incomplete


class _Groups:
    """The groups of one weights file by path, each opened once through hard links only, and
    the children of a group by the layer name saved on them."""

    def __init__(self, root: ObjectID) -> None:
        self._open: dict[tuple[str, ...], ObjectID | None] = {(): root}
        self._saved_names: dict[tuple[str, ...], dict[str, tuple[str, ObjectID]]] = {}

    def group(self, segments: tuple[str, ...]) -> ObjectID | None:
        if segments not in self._open:
            parent = self.group(segments[:-1])
            where = "/".join(segments[:-1])
            self._open[segments] = (
                None if parent is None else open_group(parent, segments[-1], where)
            )
        return self._open[segments]

    def by_saved_name(self, parent_path: tuple[str, ...]) -> dict[str, tuple[str, ObjectID]]:
        """The ``vars`` groups below the group at ``parent_path`` by the layer name Keras 3.15+
        saved on them (the first of a name wins); one pass over each parent."""
        if parent_path not in self._saved_names:
            parent = self.group(parent_path)
            named: dict[str, tuple[str, ObjectID]] = {}
            if parent is not None:
                where = "/".join(parent_path)
                for key, _ in hard_links(parent, where):
                    sibling = open_group(parent, key, where)
                    if sibling is None:
                        continue
                    vars_group = open_group(sibling, "vars", joined(where, key))
                    name = None if vars_group is None else text_attr_id(vars_group, "name")
                    if name is not None and name not in named:
                        named[name] = (key, vars_group)
            self._saved_names[parent_path] = named
        return self._saved_names[parent_path]


def _layer_group(groups: _Groups, layer: LayerConfig) -> tuple[tuple[str, ...], ObjectID] | None:
    """The ``vars`` group of ``layer`` and the path of its layer group: Keras's naming scheme,
    checked against the saved name; ``None`` when the layer's group has no ``vars``."""
    segments = layer.saving_path
    group = groups.group(segments)
    if group is not None:
        where = "/".join(segments)
        found = open_hard(group, "vars", where)
        if found is None:
            return None
        vars_group = found[0]
        if not isinstance(vars_group, h5py.h5g.GroupID):
            return (segments, vars_group)  # refused as no group when its variables are read
        recorded = text_attr_id(vars_group, "name")
        if recorded is None or recorded == layer.name:
            return (segments, vars_group)
    # The recorded name disagrees (or the group is missing): look for the sibling that Keras
    # 3.15+ labelled with this layer's name.
    parent_path = segments[:-1]
    named = groups.by_saved_name(parent_path)
    if layer.name in named:
        key, vars_group = named[layer.name]
        return (*parent_path, key), vars_group
    raise ModelReadError(
        f"cannot find the weights of {'/'.join(layer.path)} (expected group {'/'.join(segments)})"
    )


def _bn_layer(
    layer: LayerConfig, segments: tuple[str, ...], vars_group: ObjectID
) -> BNLayer | IncompleteLayer:
    """The layer's arrays by their index in ``vars``; a layer missing some index is incomplete,
    the index telling which array is gone (Keras numbers a layer's variables in creation order)."""
    where = "/".join(segments)
    settings = bn_settings(layer)
    datasets = keras3_layout.variables_of(vars_group, where)
    roles = keras3_layout.bn_roles(settings["center"], settings["scale"], renorm(layer))
    if datasets and max(datasets) >= len(roles):
        raise ModelReadError(
            f"{where} holds variable {max(datasets)} where its configuration implies "
            f"{len(roles)} variables"
        )
    missing = tuple(role for index, role in enumerate(roles) if role and index not in datasets)
    if missing:
        present = tuple(role for index, role in enumerate(roles) if role and index in datasets)
        return IncompleteLayer("/".join(layer.path), present, missing, f"{where}/vars")
    arrays = keras3_layout.read_roles([datasets[i] for i in range(len(roles))], roles, where)
    return BNLayer.from_arrays(
        arrays,
        path="/".join(layer.path),
        name=layer.name,
        class_name=layer.class_name,
        source=f"{where}/vars",
        locations=keras3_layout.role_locations(roles, where),
        # Keras 3 (the only writer of .keras archives) averages the biased batch variance.
        variance_estimator="biased",
        **settings,
    )


@contextlib.contextmanager
def _open_member(path: str, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
    """A seekable file object over one archive member: in place when it is stored uncompressed,
    else inflated (within ``max_inflated_size``) to a temporary file."""
    if info.compress_type != zipfile.ZIP_STORED:
        with tempfile.TemporaryFile(prefix="bncheck-") as inflated:
            inflate(archive, info, inflated)
            inflated.seek(0)
            yield inflated
        return
    raw = open(path, "rb")  # noqa: SIM115 - closed by FileWindow.close
    window = FileWindow(raw, _data_offset(raw, info), info.file_size)
    # libhdf5 reads the metadata of neighbouring objects in many small pieces: a buffer serves
    # most of them without a call back into the window.
    with io.BufferedReader(window, buffer_size=_HDF5_BUFFER) as buffered:
        yield buffered


def _data_offset(raw: IO[bytes], info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start: after its local file header, name and extra field."""
    raw.seek(info.header_offset)
    header = raw.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
        raise ModelReadError(f"corrupt zip archive: bad local header for {info.filename}")
    fields = _LOCAL_HEADER.unpack(header)
    name_length, extra_length = fields[-2], fields[-1]
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    raw.seek(0, 2)
    if start + info.file_size > raw.tell():
        raise ModelReadError(f"truncated zip archive: {info.filename} extends past the end of file")
    return start
