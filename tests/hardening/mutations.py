"""A deterministic corpus of corrupted model files, made from the committed fixtures.

Every case is a file (or directory) bncheck must survive: a valid report, or exit code 3 with one
clear line. ``build_corpus(directory, extra)`` writes the cases and returns them; ``extra`` adds
that many more random truncations and byte flips (the large run).
"""

from __future__ import annotations

import io
import json
import random
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tests.conftest import FIXTURES

KERAS = FIXTURES / "keras3/nested.keras"
SOURCES = [
    KERAS,
    FIXTURES / "keras3/nested.h5",
    FIXTURES / "keras2/nested.h5",
    FIXTURES / "weights/nested.weights.h5",
    FIXTURES / "weights/keras2_nested_weights.h5",
]
LEGACY_H5 = FIXTURES / "keras3/nested.h5"
KERAS2_H5 = FIXTURES / "keras2/nested.h5"
WEIGHTS_H5 = FIXTURES / "weights/nested.weights.h5"
#: Read by position, not by name: Keras 2.0.5 with uniquified scopes and a nested model.
ERA_H5 = FIXTURES / "eras/keras205_nested_frozen.h5"


@dataclass(frozen=True)
class Case:
    name: str
    """What was done to which fixture."""
    path: Path
    """The corrupted input to inspect."""


class Corpus:
    def __init__(self, directory: Path, seed: int) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.cases: list[Case] = []

    def add(self, name: str, data: bytes, suffix: str) -> None:
        path = self.directory / f"{len(self.cases):04d}{suffix}"
        path.write_bytes(data)
        self.cases.append(Case(name, path))

    def add_path(self, name: str, path: Path) -> None:
        self.cases.append(Case(name, path))

    def new_path(self, suffix: str) -> Path:
        return self.directory / f"{len(self.cases):04d}{suffix}"


def build_corpus(directory: Path, extra: int = 0, seed: int = 20261123) -> list[Case]:
    corpus = Corpus(directory, seed)
    for source in SOURCES:
        _truncations(corpus, source, extra)
        _byte_flips(corpus, source, extra)
    _zip_member_cases(corpus)
    for name, edit in CONFIG_EDITS.items():
        _keras_config_case(corpus, name, edit)
        _legacy_config_case(corpus, name, edit)
    for name, text in RAW_CONFIGS.items():
        _keras_config_text_case(corpus, name, text)
    for name, mutate in DATASET_EDITS.items():
        for source in (LEGACY_H5, KERAS2_H5, WEIGHTS_H5, ERA_H5):
            _h5_case(corpus, f"{name} in {source.name}", source, mutate)
        _keras_weights_case(corpus, name, mutate)
    _odd_inputs(corpus)
    return corpus.cases


def _truncations(corpus: Corpus, source: Path, extra: int) -> None:
    data = source.read_bytes()
    offsets = {0, 1, 4, 8, 64, 512, 2048, len(data) - 1, len(data) - 16, len(data) - 512}
    offsets |= {len(data) * k // 16 for k in range(1, 16)}
    offsets |= {corpus.rng.randrange(len(data)) for _ in range(extra // 2)}
    for offset in sorted(o for o in offsets if 0 <= o < len(data)):
        corpus.add(f"{source.name} truncated at {offset}", data[:offset], source.suffix)


def _byte_flips(corpus: Corpus, source: Path, extra: int) -> None:
    data = source.read_bytes()
    regions = [("header", 0, min(4096, len(data)))] * 8 + [("data", 4096, len(data))] * 6
    regions += [("anywhere", 0, len(data))] * (extra // 2)
    for region, start, end in regions:
        mutated = bytearray(data)
        positions = [corpus.rng.randrange(start, end) for _ in range(corpus.rng.randint(1, 8))]
        for position in positions:
            mutated[position] ^= corpus.rng.randrange(1, 256)
        corpus.add(
            f"{source.name} flipped in {region} at {positions}", bytes(mutated), source.suffix
        )


def _members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(info.filename, archive.read(info)) for info in archive.infolist()]


def _zip(members: list[tuple[str, bytes]]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate member names are part of the corpus
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def _zip_member_cases(corpus: Corpus) -> None:
    members = _members(KERAS)
    names = [name for name, _ in members]
    for removed in names:
        corpus.add(
            f"zip without {removed}", _zip([m for m in members if m[0] != removed]), ".keras"
        )
    for renamed in names:
        moved = [(f"{n}.old" if n == renamed else n, d) for n, d in members]
        corpus.add(f"zip with {renamed} renamed", _zip(moved), ".keras")
    for duplicated in names:
        corpus.add(
            f"zip with {duplicated} twice", _zip(members + [(duplicated, b"garbage")]), ".keras"
        )
    corpus.add("zip with weights first", _zip(list(reversed(members))), ".keras")
    corpus.add("empty zip", _zip([]), ".keras")
    corpus.add("zip of a zip", _zip([("config.json", KERAS.read_bytes())]), ".keras")
    weights = dict(members)["model.weights.h5"]
    for cut in (0, 8, len(weights) // 2):
        cut_members = [(n, weights[:cut] if n == "model.weights.h5" else d) for n, d in members]
        corpus.add(f"zip with weights cut at {cut}", _zip(cut_members), ".keras")


ConfigEdit = Callable[[dict[str, Any]], Any]


def _first_bn(config: dict[str, Any]) -> dict[str, Any]:
    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("class_name") == "BatchNormalization":
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    return next(walk(config))


def _set_bn(key: str, value: Any) -> ConfigEdit:
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        _first_bn(config)["config"][key] = value
        return config

    return edit


def _set_first_bn(key: str, value: Any) -> ConfigEdit:
    """Replace a key of the first BatchNormalization node itself, beside its ``config``."""

    def edit(config: dict[str, Any]) -> dict[str, Any]:
        _first_bn(config)[key] = value
        return config

    return edit


def _set_top(path: list[str], value: Any) -> ConfigEdit:
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        return config

    return edit


def _drop_top(path: list[str]) -> ConfigEdit:
    def edit(config: dict[str, Any]) -> dict[str, Any]:
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return config

    return edit


def _rename_bn(config: dict[str, Any]) -> dict[str, Any]:
    _first_bn(config)["config"]["name"] = "no_such_layer/../../x"
    return config


CONFIG_EDITS: dict[str, ConfigEdit] = {
    "config is a list": lambda config: [config],
    "config is a string": lambda config: "model",
    "class_name is a number": _set_top(["class_name"], 7),
    "config is a number": _set_top(["config"], 3),
    "layers is an object": _set_top(["config", "layers"], {"a": 1}),
    "layers holds a string": _set_top(["config", "layers"], ["dense"]),
    "layers holds null": _set_top(["config", "layers"], [None]),
    "no layers": _drop_top(["config", "layers"]),
    "no config": _drop_top(["config"]),
    "no class_name": _drop_top(["class_name"]),
    "BN momentum is text": _set_bn("momentum", "high"),
    "BN momentum is null": _set_bn("momentum", None),
    "BN momentum is true": _set_bn("momentum", True),
    "BN epsilon is a list": _set_bn("epsilon", [1, 2]),
    "BN axis is text": _set_bn("axis", "channels"),
    "BN center is text": _set_bn("center", "no"),
    "BN scale is false without weights change": _set_bn("scale", False),
    "BN center is false without weights change": _set_bn("center", False),
    "BN renorm is true": _set_bn("renorm", True),
    "BN initializer is a number": _set_bn("gamma_initializer", 5),
    "BN initializer constant without value": _set_bn(
        "moving_mean_initializer", {"class_name": "Constant", "config": {}}
    ),
    "BN name is null": _set_bn("name", None),
    "BN name points elsewhere": _rename_bn,
    "BN config is a list": _set_first_bn("config", [1]),
    "BN inbound nodes are text": _set_first_bn("inbound_nodes", "x"),
    "BN inbound nodes are odd": _set_first_bn(
        "inbound_nodes", [[1, [2]], {"args": 5, "kwargs": []}]
    ),
}

RAW_CONFIGS = {
    "config is empty": b"",
    "config is invalid JSON": b'{"class_name": "Functional", "config": {',
    "config is not UTF-8": b'{"class_name": "\xff\xfe"}',
    "config is NaN": b"NaN",
    "config has huge numbers": b'{"class_name": "Functional", "config": {"layers": [1e999999]}}',
    "config is deeply nested arrays": b"[" * 100000 + b"]" * 100000,
    "deeply nested models": (b'{"class_name": "Sequential", "config": {"layers": [' * 3000)
    + b"]}}" * 3000,
}


def _keras_config_case(corpus: Corpus, name: str, edit: ConfigEdit) -> None:
    members = _members(KERAS)
    config = json.loads(dict(members)["config.json"])
    text = json.dumps(edit(config)).encode()
    _keras_config_text_case(corpus, name, text)


def _keras_config_text_case(corpus: Corpus, name: str, text: bytes) -> None:
    members = [(n, text if n == "config.json" else d) for n, d in _members(KERAS)]
    corpus.add(f".keras {name}", _zip(members), ".keras")


def _legacy_config_case(corpus: Corpus, name: str, edit: ConfigEdit) -> None:
    path = corpus.new_path(".h5")
    path.write_bytes(LEGACY_H5.read_bytes())
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        h5.attrs["model_config"] = json.dumps(edit(config))
    corpus.add_path(f"legacy .h5 {name}", path)


DatasetEdit = Callable[[h5py.Group, str], None]


def _replace(make: Callable[[h5py.Group, str], None]) -> DatasetEdit:
    def edit(parent: h5py.Group, key: str) -> None:
        del parent[key]
        make(parent, key)

    return edit


DATASET_EDITS: dict[str, DatasetEdit] = {
    "2-D moving variance": _replace(lambda g, k: g.create_dataset(k, data=np.ones((2, 3), "f4"))),
    "longer moving variance": _replace(lambda g, k: g.create_dataset(k, data=np.ones(9, "f4"))),
    "scalar moving variance": _replace(lambda g, k: g.create_dataset(k, data=np.float32(1))),
    "empty moving variance": _replace(lambda g, k: g.create_dataset(k, shape=(0,), dtype="f4")),
    "text moving variance": _replace(lambda g, k: g.create_dataset(k, data=np.array([b"a", b"b"]))),
    "integer moving variance": _replace(lambda g, k: g.create_dataset(k, data=np.arange(8))),
    "compound moving variance": _replace(
        lambda g, k: g.create_dataset(k, data=np.zeros(8, dtype=[("a", "f4"), ("b", "i4")]))
    ),
    "absurd claimed shape": _replace(
        lambda g, k: g.create_dataset(k, shape=(2**36,), dtype="f4", chunks=(1024,))
    ),
    "group instead of dataset": _replace(lambda g, k: g.create_group(k)),
    "dangling soft link": _replace(lambda g, k: g.__setitem__(k, h5py.SoftLink("/nowhere"))),
    "external link": _replace(
        lambda g, k: g.__setitem__(k, h5py.ExternalLink("/nonexistent.h5", "/data"))
    ),
    "removed moving variance": lambda g, k: g.__delitem__(k),
    "values stored in an outside file": _replace(
        lambda g, k: g.create_dataset(
            k, shape=(8,), dtype="f4", external=[("/etc/hostname", 0, 32)]
        )
    ),
    "virtual dataset over an outside file": _replace(
        lambda g, k: g.create_virtual_dataset(k, _outside_layout())
    ),
}


def _outside_layout() -> h5py.VirtualLayout:
    layout = h5py.VirtualLayout(shape=(8,), dtype="f4")
    layout[:] = h5py.VirtualSource("/nonexistent/outside.h5", "data", shape=(8,))
    return layout


def _moving_variance_keys(h5: h5py.File) -> list[tuple[str, str]]:
    """(parent group, key) of moving-variance datasets, by name or Keras 3 index layout."""
    found: list[tuple[str, str]] = []

    def visit(name: str, node: object) -> None:
        leaf = name.rsplit("/", 1)[-1]
        if isinstance(node, h5py.Dataset) and leaf.startswith("moving_variance"):
            found.append((name.rsplit("/", 1)[0], leaf))
        if isinstance(node, h5py.Group) and leaf == "vars" and len(node) == 4:
            found.append((name, "3"))

    h5.visititems(visit)
    return found


def _h5_case(corpus: Corpus, name: str, source: Path, edit: DatasetEdit) -> None:
    path = corpus.new_path(".h5")
    path.write_bytes(source.read_bytes())
    with h5py.File(path, "r+") as h5:
        parent, key = _moving_variance_keys(h5)[0]
        edit(h5[parent], key)
    corpus.add_path(name, path)


def _keras_weights_case(corpus: Corpus, name: str, edit: DatasetEdit) -> None:
    members = _members(KERAS)
    weights = corpus.directory / "scratch.weights.h5"
    weights.write_bytes(dict(members)["model.weights.h5"])
    with h5py.File(weights, "r+") as h5:
        parent, key = _moving_variance_keys(h5)[0]
        edit(h5[parent], key)
    replaced = [(n, weights.read_bytes() if n == "model.weights.h5" else d) for n, d in members]
    weights.unlink()
    corpus.add(f".keras weights: {name}", _zip(replaced), ".keras")


def _odd_inputs(corpus: Corpus) -> None:
    corpus.add("empty file", b"", ".keras")
    corpus.add("zip magic then noise", b"PK\x03\x04" + bytes(range(256)) * 8, ".keras")
    corpus.add("HDF5 signature then noise", b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8, ".h5")
    corpus.add("random bytes", random.Random(1).randbytes(5000), ".h5")
    folder = corpus.new_path(".keras")
    folder.mkdir()
    corpus.add_path("directory where a .keras file is expected", folder)
    h5_folder = corpus.new_path(".h5")
    h5_folder.mkdir()
    (h5_folder / "saved_model.pb").mkdir()
    corpus.add_path("directory with a directory named saved_model.pb", h5_folder)


CHECKPOINTS = FIXTURES / "checkpoints"


def build_tensorflow_corpus(directory: Path) -> list[Case]:
    """Corrupted checkpoints and SavedModels: index, data shards, state file and protos."""
    import shutil

    corpus = Corpus(directory, seed=7)

    def case(name: str, source: str, member: str, mutate: Callable[[Path], None]) -> None:
        target = corpus.new_path("")
        shutil.copytree(CHECKPOINTS / source, target)
        mutate(target / member)
        corpus.add_path(f"{source}: {name}", target)

    def truncate(fraction: float) -> Callable[[Path], None]:
        def cut(path: Path) -> None:
            path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])

        return cut

    def flip(path: Path) -> None:
        data = bytearray(path.read_bytes())
        for _ in range(4):
            data[corpus.rng.randrange(len(data))] ^= 0x5A
        path.write_bytes(bytes(data))

    garbage = lambda path: path.write_bytes(corpus.rng.randbytes(300))  # noqa: E731
    for source, prefix in (("tf1_saver_all", "model.ckpt-300"), ("keras3_object", "ckpt-1")):
        index, shard = f"{prefix}.index", f"{prefix}.data-00000-of-00001"
        case("index emptied", source, index, truncate(0))
        case("index cut in half", source, index, truncate(0.5))
        case("index bytes flipped", source, index, flip)
        case("data shard cut in half", source, shard, truncate(0.5))
        case("data shard bytes flipped", source, shard, flip)
        case("data shard removed", source, shard, Path.unlink)
        case("state file is garbage", source, "checkpoint", garbage)
    for source in ("tfkeras_savedmodel", "keras3_export"):
        case("saved_model.pb cut in half", source, "saved_model.pb", truncate(0.5))
        case("saved_model.pb bytes flipped", source, "saved_model.pb", flip)
        case("variables index is garbage", source, "variables/variables.index", garbage)
        case(
            "variables data removed", source, "variables/variables.data-00000-of-00001", Path.unlink
        )
    case("keras_metadata.pb is garbage", "tfkeras_savedmodel", "keras_metadata.pb", garbage)
    case("keras_metadata.pb cut in half", "tfkeras_savedmodel", "keras_metadata.pb", truncate(0.5))
    return corpus.cases


PYTORCH = FIXTURES / "pytorch"
OTHER_SOURCES = [
    PYTORCH / "healthy.pt",
    PYTORCH / "healthy_legacy.pt",
    PYTORCH / "healthy_model.pt",
    PYTORCH / "healthy_torchscript.pt",
    PYTORCH / "healthy.safetensors",
    PYTORCH / "healthy.onnx",
]


def build_other_frameworks_corpus(directory: Path, extra: int = 0) -> list[Case]:
    """Corrupted and hostile PyTorch, safetensors and ONNX files: truncations and byte flips of
    each kind of fixture, then targeted damage to archives, pickles, tensor metadata (the
    CVE-2026-24747 shape: offsets and sizes a storage does not hold), headers and external
    data."""
    corpus = Corpus(directory, seed=13)
    for source in OTHER_SOURCES:
        data = source.read_bytes()
        offsets = {len(data) * k // 8 for k in range(8)} | {1, 8, len(data) - 1}
        offsets |= {corpus.rng.randrange(len(data)) for _ in range(extra // 2)}
        for offset in sorted(offsets):
            corpus.add(f"{source.name} truncated at {offset}", data[:offset], source.suffix)
        for _ in range(6 + extra // 2):
            mutated = bytearray(data)
            positions = [corpus.rng.randrange(len(data)) for _ in range(corpus.rng.randint(1, 8))]
            for position in positions:
                mutated[position] ^= corpus.rng.randrange(1, 256)
            corpus.add(f"{source.name} flipped at {positions}", bytes(mutated), source.suffix)
    _torch_archive_cases(corpus)
    _pickle_cases(corpus)
    _legacy_cases(corpus)
    _safetensors_cases(corpus)
    _onnx_cases(corpus)
    return corpus.cases


def _torch_archive_cases(corpus: Corpus) -> None:
    members = _members(PYTORCH / "healthy.pt")
    names = [name for name, _ in members]
    for removed in names:
        corpus.add(f".pt without {removed}", _zip([m for m in members if m[0] != removed]), ".pt")
    for emptied in (name for name in names if "/data/" in name):
        cut = [(n, b"" if n == emptied else d) for n, d in members]
        corpus.add(f".pt with {emptied} emptied", _zip(cut), ".pt")
    pickle_name = next(name for name in names if name.endswith("/data.pkl"))
    corpus.add(".pt with two data.pkl", _zip(members + [("other/data.pkl", b"\x80\x02}.")]), ".pt")
    corpus.add(
        ".pt with byteorder 'middle'", _zip(_replace_member(members, "byteorder", b"middle")), ".pt"
    )
    bomb = zipfile.ZipInfo(pickle_name)
    bomb.compress_type = zipfile.ZIP_DEFLATED
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(bomb, b"\x80\x02" + b"N0" * (150 << 20) + b"}.")
    corpus.add(".pt whose data.pkl inflates to 300 MB", buffer.getvalue(), ".pt")


def _replace_member(
    members: list[tuple[str, bytes]], suffix: str, data: bytes
) -> list[tuple[str, bytes]]:
    return [(name, data if name.endswith(suffix) else value) for name, value in members]


def _pickle_cases(corpus: Corpus) -> None:
    from tests.torch_files import Name, Tensor, bn_arrays, dumps, state_dict, write_zip

    members = _members(PYTORCH / "healthy.pt")
    raw_pickles = {
        "a pickle nested 100000 lists deep": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
        "dictionaries 5000 deep": b"\x80\x02"
        + b"}X\x04\x00\x00\x00next" * 5000
        + b"}"
        + b"s" * 5000
        + b".",
        "a key whose hash never ends": b"\x80\x02}K\x01" + b"q\x00h\x00\x86" * 80 + b"K\x00s.",
        "a string claiming 2**62 bytes": b"\x80\x02\x8d" + (1 << 62).to_bytes(8, "little") + b"x.",
        "a huge memo index": b"\x80\x02}r\xff\xff\xff\x7fh\x00.",
        "an EXT1 code": b"\x80\x02\x82\x01.",
        "an out-of-band buffer": b"\x80\x05\x97.",
        "BUILD on a list": b"\x80\x02]}b.",
        "a persistent id that is a number": b"\x80\x02K\x05Q.",
        "only a STOP": b".",
        "a 2**64 integer dictionary": b"\x80\x02}\x8a\x09" + b"\xff" * 8 + b"\x01K\x00s.",
    }
    for name, data in raw_pickles.items():
        corpus.add(f".pt with {name}", _zip(_replace_member(members, "data.pkl", data)), ".pt")
    mean = np.zeros(4, "float32")
    tensors = {
        "offset past the storage": Tensor("0", mean, offset=8),
        "size of 2**62": Tensor("0", mean, size=(2**62,)),
        "negative size": Tensor("0", mean, size=(-4,)),
        "size and stride of different lengths": Tensor("0", mean, size=(4,), stride=(1, 1)),
        "stride of 2**40": Tensor("0", mean, stride=(2**40,)),
        "65 dimensions": Tensor("0", mean, size=(1,) * 65, stride=(1,) * 65),
        "storage claiming 2**50 values": Tensor("0", mean, numel=2**50),
        "storage key ../../etc/passwd": Tensor("../../etc/passwd", mean),
        "float size": Tensor("0", mean, size=(4.0,)),  # type: ignore[arg-type]
    }
    for name, tensor in tensors.items():
        arrays = {"bn.running_mean": tensor, "bn.running_var": Tensor("1", np.ones(4, "f4"))}
        path = write_zip(corpus.new_path(".pt"), arrays)
        corpus.add_path(f".pt tensor with {name}", path)
    storage_types = {
        "QInt8Storage": Name("torch", "QInt8Storage"),
        "os.system": Name("os", "system"),
    }
    for name, storage_type in storage_types.items():
        data = dumps(state_dict(bn_arrays("bn"))).replace(
            b"torch\nFloatStorage", f"{storage_type.module}\n{storage_type.name}".encode()
        )
        path = write_zip(corpus.new_path(".pt"), state_dict(bn_arrays("bn")), data_pkl=data)
        corpus.add_path(f".pt with storage type {name}", path)


def _legacy_cases(corpus: Corpus) -> None:
    from tests.torch_files import bn_arrays, state_dict, write_legacy

    data = write_legacy(
        corpus.directory / "scratch_legacy.pt", state_dict(bn_arrays("bn"))
    ).read_bytes()
    (corpus.directory / "scratch_legacy.pt").unlink()
    count = data.rindex(np.int64(4).tobytes())
    corpus.add(
        "legacy storage count 99", data[:count] + np.int64(99).tobytes() + data[count + 8 :], ".pt"
    )
    corpus.add(
        "legacy storage count 2**62",
        data[:count] + np.int64(2**62).tobytes() + data[count + 8 :],
        ".pt",
    )
    corpus.add("legacy last storage cut", data[:-4], ".pt")
    big = write_legacy(corpus.new_path(".pt"), state_dict(bn_arrays("bn")), little_endian=False)
    corpus.add_path("legacy big-endian", big)
    corpus.add("legacy wrong protocol", data.replace(b"M\xe9\x03.", b"M\xea\x03.", 1), ".pt")


def _safetensors_cases(corpus: Corpus) -> None:
    import struct

    source = (PYTORCH / "healthy.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", source[:8])
    header = json.loads(source[8 : 8 + length])
    data = source[8 + length :]

    def write(name: str, changed: object, payload: bytes = data) -> None:
        text = json.dumps(changed).encode()
        corpus.add(
            f"safetensors {name}", struct.pack("<Q", len(text)) + text + payload, ".safetensors"
        )

    key = next(k for k in header if k.endswith("running_var"))
    edits: dict[str, Callable[[dict[str, Any]], None]] = {
        "offsets past the end": lambda h: h[key].update(data_offsets=[0, len(data) + 4]),
        "offsets reversed": lambda h: h[key].update(data_offsets=[16, 8]),
        "negative offsets": lambda h: h[key].update(data_offsets=[-8, 24]),
        "huge shape": lambda h: h[key].update(shape=[2**40]),
        "text shape": lambda h: h[key].update(shape="sixteen"),
        "unknown dtype": lambda h: h[key].update(dtype="F7"),
        "integer statistics": lambda h: h[key].update(dtype="I32"),
        "entry is a list": lambda h: h.__setitem__(key, [1]),
        "no offsets": lambda h: h[key].pop("data_offsets"),
        "metadata is a list": lambda h: h.__setitem__("__metadata__", [1]),
    }
    for name, edit in edits.items():
        changed = json.loads(json.dumps(header))
        edit(changed)
        write(name, changed)
    write("without data", header, b"")
    nested = b"[" * 100_000 + b"]" * 100_000
    corpus.add(
        "safetensors header nested 100000 deep",
        struct.pack("<Q", len(nested)) + nested,
        ".safetensors",
    )
    corpus.add("safetensors header length 2**63", struct.pack("<Q", 2**63) + b"{}", ".safetensors")
    corpus.add(
        "safetensors header length past the end", struct.pack("<Q", 4096) + b"{}", ".safetensors"
    )


def _onnx_cases(corpus: Corpus) -> None:
    import os

    import onnx

    source = onnx.load(str(PYTORCH / "healthy.onnx"))

    def save(name: str, model: onnx.ModelProto) -> None:
        path = corpus.new_path(".onnx")
        onnx.save(model, path)
        corpus.add_path(f"onnx {name}", path)

    def edited(edit: Callable[[onnx.ModelProto], None]) -> onnx.ModelProto:
        model = onnx.ModelProto()
        model.CopyFrom(source)
        edit(model)
        return model

    def variance(model: onnx.ModelProto) -> onnx.TensorProto:
        return next(t for t in model.graph.initializer if t.name.endswith("running_var"))

    def bn(model: onnx.ModelProto) -> onnx.NodeProto:
        return next(n for n in model.graph.node if n.op_type == "BatchNormalization")

    def two_inputs(model: onnx.ModelProto) -> None:
        del bn(model).input[2:]

    def identity_cycle(model: onnx.ModelProto) -> None:
        model.graph.node.append(onnx.helper.make_node("Identity", ["a"], ["b"]))
        model.graph.node.append(onnx.helper.make_node("Identity", ["b"], ["a"]))
        bn(model).input[4] = "a"

    edits: dict[str, Callable[[onnx.ModelProto], None]] = {
        "variance of huge dims": lambda m: variance(m).dims.__setitem__(0, 2**40),
        "variance of negative dims": lambda m: variance(m).dims.__setitem__(0, -8),
        "variance of unknown type": lambda m: setattr(variance(m), "data_type", 999),
        "variance as text": lambda m: setattr(variance(m), "data_type", onnx.TensorProto.STRING),
        "variance cut short": lambda m: setattr(variance(m), "raw_data", variance(m).raw_data[:6]),
        "BatchNorm with two inputs": two_inputs,
        "BatchNorm on a missing value": lambda m: bn(m).input.__setitem__(4, "nowhere"),
        "Identity cycle": identity_cycle,
        "no graph": lambda m: m.ClearField("graph"),
        "IR version 0": lambda m: setattr(m, "ir_version", 0),
    }
    for name, edit in edits.items():
        save(name, edited(edit))
    locations = {
        "parent directory": "../weights.bin",
        "absolute path": "/etc/hostname",
        "device": "/dev/zero",
        "backslashes": "..\\weights.bin",
        "empty": "",
        "directory": ".",
    }
    for name, location in locations.items():
        folder = corpus.new_path("")
        folder.mkdir()
        model = edited(lambda m: None)
        onnx.save_model(
            model,
            folder / "model.onnx",
            save_as_external_data=True,
            location="w.bin",
            size_threshold=0,
        )
        external = onnx.load(str(folder / "model.onnx"), load_external_data=False)
        for tensor in external.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(external, folder / "model.onnx")
        corpus.add_path(f"onnx external data at {name}", folder / "model.onnx")
    folder = corpus.new_path("")
    folder.mkdir()
    onnx.save_model(
        edited(lambda m: None),
        folder / "model.onnx",
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    outside = corpus.directory / "outside.bin"
    outside.write_bytes((folder / "w.bin").read_bytes())
    (folder / "w.bin").unlink()
    os.symlink(outside, folder / "w.bin")
    corpus.add_path("onnx external data through a symlink out of the folder", folder / "model.onnx")
