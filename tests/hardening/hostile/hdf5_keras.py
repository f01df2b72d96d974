"""Hostile HDF5 files and ``.keras`` archives: links, hard-link tricks, size bombs, zip members
zipfile cannot read.

Each builder writes its files into an empty folder and returns bncheck's arguments. The
recalibrate cases start from the project's own fixtures (a model Keras loads, the digits data),
so that only the hostile part differs from a file recalibrate repairs.
"""

from __future__ import annotations

import json
import shutil
import struct
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from tests.hardening.hostile import HostileCase

FIXTURES = Path(__file__).resolve().parents[3] / "fixtures"
KERAS2_H5 = FIXTURES / "probe" / "keras2_stale.h5"
KERAS3_ARCHIVE = FIXTURES / "probe" / "stale_stats.keras"
DIGITS = FIXTURES / "data" / "digits_0_1.npy"
REFUSED = frozenset({3})


def _recalibrate(folder: Path, model: Path) -> list[str]:
    data = folder / "digits.npy"
    shutil.copyfile(DIGITS, data)
    out = folder / f"OUT{model.suffix}"
    return ["recalibrate", str(model), "--data", str(data), "--validate", str(data),
            "-o", str(out), "--force"]  # fmt: skip


def _bn_weights(h5: h5py.Group, layer: str) -> None:
    """A legacy weights-only layer group holding one BatchNorm's four arrays."""
    for leaf, value in (("gamma", 1.0), ("beta", 0.0), ("moving_mean", 0.0)):
        h5[f"{layer}/{leaf}:0"] = np.full(4, value, "float32")


# --- links -------------------------------------------------------------------------------


def external_link_into_input(folder: Path) -> Sequence[str]:
    """The attack that wrote into the input: a weight name starting with ``/`` (read from the
    file's root) and, where the writer's rebuilt ``model_weights/bn1//...`` path lands, a group
    with links into the input itself and into another file."""
    model = folder / "model.h5"
    shutil.copyfile(KERAS2_H5, model)
    victim = folder / "victim.h5"
    with h5py.File(victim, "w") as h5:
        h5["moving_mean:0"] = np.zeros(8, "float32")
    with h5py.File(model, "r+") as h5:
        group = h5["model_weights/bn1"]
        names = [
            name.decode() if isinstance(name, bytes) else str(name)
            for name in group.attrs["weight_names"]
        ]
        # The reader went to /evil/... at the root; the writer's rebuilt path string,
        # model_weights/bn1//evil/..., to the group's external links: into another file and
        # into the input itself.
        for index, leaf in ((2, "moving_mean:0"), (3, "moving_variance:0")):
            h5[f"evil/{leaf}"] = h5[f"model_weights/bn1/bn1/{leaf}"][()]
            names[index] = f"/evil/{leaf}"
        group["evil/moving_mean:0"] = h5py.ExternalLink(str(victim), "/moving_mean:0")
        group["evil/moving_variance:0"] = h5py.ExternalLink(
            str(model), "/model_weights/bn1/bn1/moving_variance:0"
        )
        group.attrs["weight_names"] = [name.encode() for name in names]
    return _recalibrate(folder, model)


def soft_link_on_read_path(folder: Path) -> Sequence[str]:
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        _bn_weights(h5, "bn")
        h5["elsewhere"] = np.ones(4, "float32")
        h5["bn/moving_variance:0"] = h5py.SoftLink("/elsewhere")
    return ["inspect", str(path)]


def external_link_on_read_path(folder: Path) -> Sequence[str]:
    other = folder / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["data"] = np.ones(4, "float32")
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        _bn_weights(h5, "bn")
        h5["bn/moving_variance:0"] = h5py.ExternalLink(str(other), "/data")
    return ["inspect", str(path)]


def soft_link_chain(folder: Path) -> Sequence[str]:
    """Soft links that double at every level: followed naively, 2^40 paths."""
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        for level in range(40):
            for side in "ab":
                h5[f"g{level}/{side}"] = h5py.SoftLink(f"/g{level + 1}")
        h5["g40/bn/moving_mean:0"] = np.zeros(4, "float32")
    return ["inspect", str(path)]


def hard_link_dag(folder: Path) -> Sequence[str]:
    """Each group holds the next one twice, by hard links: 2^40 paths to walk."""
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        groups = [h5.create_group(f"level{level}") for level in range(41)]
        for upper, lower in zip(groups, groups[1:], strict=False):
            upper["a"] = lower
            upper["b"] = lower
        _bn_weights(groups[-1], "bn")
        groups[-1]["bn/moving_variance:0"] = np.ones(4, "float32")
    return ["inspect", str(path)]


def hard_link_cycle(folder: Path) -> Sequence[str]:
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        _bn_weights(h5, "bn")
        h5["bn/moving_variance:0"] = np.ones(4, "float32")
        h5["bn/loop"] = h5["bn"]
    return ["inspect", str(path)]


# --- sizes -------------------------------------------------------------------------------


def fill_value_shared_by_layers(folder: Path) -> Sequence[str]:
    """One dataset with no stored values, 2^24 floats declared, hard-linked as 300 layers'
    statistics: read naively, 300 x 64 MiB."""
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        fill = h5.create_dataset("fill", shape=(1 << 24,), dtype="float32", fillvalue=1.0)
        for layer in range(300):
            for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
                h5[f"bn_{layer}/{leaf}:0"] = fill
    return ["inspect", str(path)]


def small_dataset_shared_by_layers(folder: Path) -> Sequence[str]:
    """One small stored dataset hard-linked as 300 layers' statistics."""
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        shared = h5.create_dataset("shared", data=np.ones(1000, "float32"))
        for layer in range(300):
            for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
                h5[f"bn_{layer}/{leaf}:0"] = shared
    return ["inspect", str(path)]


def compressed_bomb(folder: Path) -> Sequence[str]:
    """2^24 zeros gzipped into a few kilobytes as a moving variance."""
    path = folder / "model.h5"
    with h5py.File(path, "w") as h5:
        for leaf in ("gamma", "beta", "moving_mean", "moving_variance"):
            h5.create_dataset(
                f"bn/{leaf}:0", data=np.zeros(1 << 24, "float32"), chunks=(1 << 20,),
                compression="gzip", compression_opts=9,
            )  # fmt: skip
    return ["inspect", str(path)]


def shard_not_numeric(folder: Path) -> Sequence[str]:
    """A sharded-weights index whose shard holds a million strings where weights go."""
    index = folder / "model.weights.json"
    index.write_text(
        json.dumps({"weight_map": {"/layers/batch_normalization/vars": "model_00000.weights.h5"}})
    )
    with h5py.File(folder / "model_00000.weights.h5", "w") as h5:
        h5.create_dataset(
            "layers/batch_normalization/vars/0",
            data=np.array([b"x" * 64] * (1 << 20), dtype=h5py.string_dtype()),
        )
    return ["inspect", str(index)]


def _keras_archive(path: Path, members: Sequence[tuple[str, bytes | None]], pad: int = 0) -> None:
    """The fixture archive with ``members`` replaced or added (deflated); ``None`` keeps the
    fixture's bytes; ``pad`` zero bytes are appended to model.weights.h5, deflated."""
    with zipfile.ZipFile(KERAS3_ARCHIVE) as source, zipfile.ZipFile(path, "w") as target:
        replaced = dict(members)
        for info in source.infolist():
            data = replaced.pop(info.filename, None)
            if info.filename == "model.weights.h5" and pad:
                entry = zipfile.ZipInfo(info.filename, info.date_time)
                entry.compress_type = zipfile.ZIP_DEFLATED
                with target.open(entry, "w", force_zip64=True) as handle:
                    handle.write(source.read(info))
                    chunk = bytes(1 << 20)
                    for _ in range(pad >> 20):
                        handle.write(chunk)
                continue
            if data is None:
                target.writestr(info, source.read(info))
            else:
                target.writestr(info.filename, data, zipfile.ZIP_DEFLATED)
        for name, data in replaced.items():
            target.writestr(name, data or b"", zipfile.ZIP_DEFLATED)


def asset_bomb(folder: Path) -> Sequence[str]:
    """An asset Keras would extract and recalibrate would copy: 96 MiB of zeros, deflated to
    about 100 KB."""
    model = folder / "model.keras"
    _keras_archive(model, [("assets/blob.bin", bytes(96 << 20))])
    return _recalibrate(folder, model)


def config_bomb(folder: Path) -> Sequence[str]:
    """A 200 MB config.json deflated into about 200 KB."""
    path = folder / "model.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
        with target.open("config.json", "w", force_zip64=True) as handle:
            chunk = b" " * (1 << 20)
            for _ in range(200):
                handle.write(chunk)
            handle.write(b"{}")
        with zipfile.ZipFile(KERAS3_ARCHIVE) as source:
            target.writestr("model.weights.h5", source.read("model.weights.h5"))
    return ["inspect", str(path)]


def config_too_deep(folder: Path) -> Sequence[str]:
    path = folder / "model.keras"
    _keras_archive(path, [("config.json", b'{"a":' + b"[" * 500 + b"]" * 500 + b"}")])
    return ["inspect", str(path)]


def padded_weights(folder: Path) -> Sequence[str]:
    """model.weights.h5 deflated and padded to 512 MB."""
    path = folder / "model.keras"
    _keras_archive(path, [], pad=512 << 20)
    return ["inspect", str(path)]


def duplicate_weights_member(folder: Path) -> Sequence[str]:
    path = folder / "model.keras"
    shutil.copyfile(KERAS3_ARCHIVE, path)
    with zipfile.ZipFile(path, "a") as archive:
        with zipfile.ZipFile(KERAS3_ARCHIVE) as source:
            weights = source.read("model.weights.h5")
        with warnings.catch_warnings():  # zipfile warns of the duplicate, and writes it
            warnings.simplefilter("ignore")
            archive.writestr("model.weights.h5", weights)
    return ["inspect", str(path)]


def _patch_member(path: Path, name: str, crc: int | None = None, method: int | None = None) -> None:
    """Rewrite a member's CRC or compression method in both its headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(name)
    encoded = name.encode()
    local = info.header_offset
    central = next(
        at for at in _all(data, b"PK\x01\x02") if data[at + 46 : at + 46 + len(encoded)] == encoded
    )
    if crc is not None:
        struct.pack_into("<I", data, local + 14, crc)
        struct.pack_into("<I", data, central + 16, crc)
    if method is not None:
        struct.pack_into("<H", data, local + 8, method)
        struct.pack_into("<H", data, central + 10, method)
    path.write_bytes(bytes(data))


def _all(data: bytearray, needle: bytes) -> list[int]:
    found, start = [], 0
    while (at := data.find(needle, start)) >= 0:
        found.append(at)
        start = at + 1
    return found


def extra_member_bad_crc(folder: Path) -> Sequence[str]:
    model = folder / "model.keras"
    _keras_archive(model, [("extra.bin", b"payload" * 100)])
    _patch_member(model, "extra.bin", crc=0x12345678)
    return _recalibrate(folder, model)


def extra_member_deflate64(folder: Path) -> Sequence[str]:
    model = folder / "model.keras"
    _keras_archive(model, [("extra.bin", b"payload" * 100)])
    _patch_member(model, "extra.bin", method=9)  # deflate64, which zipfile cannot read
    return _recalibrate(folder, model)


CASES: list[HostileCase] = [
    HostileCase("h5-external-link-into-input", external_link_into_input, REFUSED, "tensorflow",
                max_rss_mib=2048.0),
    HostileCase("h5-soft-link-on-read-path", soft_link_on_read_path, REFUSED),
    HostileCase("h5-external-link-on-read-path", external_link_on_read_path, REFUSED),
    HostileCase("h5-soft-link-chain", soft_link_chain, frozenset({1, 3})),
    HostileCase("h5-hard-link-dag", hard_link_dag, REFUSED),
    HostileCase("h5-hard-link-cycle", hard_link_cycle, REFUSED),
    HostileCase("h5-fill-value-shared-by-layers", fill_value_shared_by_layers, REFUSED),
    HostileCase("h5-dataset-shared-by-layers", small_dataset_shared_by_layers, REFUSED),
    HostileCase("h5-compressed-bomb", compressed_bomb, REFUSED),
    HostileCase("shards-not-numeric", shard_not_numeric, REFUSED),
    HostileCase("keras-config-bomb", config_bomb, REFUSED),
    HostileCase("keras-asset-bomb", asset_bomb, REFUSED, "tensorflow", max_rss_mib=2500),
    HostileCase("keras-config-too-deep", config_too_deep, REFUSED),
    HostileCase("keras-padded-weights", padded_weights, REFUSED),
    HostileCase("keras-duplicate-weights-member", duplicate_weights_member, REFUSED),
    HostileCase("keras-extra-member-bad-crc", extra_member_bad_crc, REFUSED, "tensorflow",
                max_rss_mib=2048.0),
    HostileCase("keras-extra-member-deflate64", extra_member_deflate64, REFUSED, "tensorflow",
                max_rss_mib=2048.0),
]  # fmt: skip
