"""Hostile PyTorch, safetensors and ONNX files: small on disk, built to cost gigabytes or minutes.

Each builder writes a file of at most a few MB whose naive reading would allocate gigabytes or
run for minutes: shapes of 100,000 dimensions, one tensor or storage shared by hundreds of
layers, a storage that inflates to 1 GiB, and pickle opcode floods that make a pickle machine
copy or log the same data over and over. bncheck must refuse each in one line (exit 3) or report
it correctly, within the corpus's time and memory bounds. None needs a framework.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.hardening.hostile import HostileCase
from tests.torch_files import Tensor, dumps

#: Dimensions of the huge-rank shapes, each 2**62: ``np.prod(shape, dtype=object)`` over them
#: multiplies ever larger integers, quadratic in the count.
HUGE_RANK = 100_000
#: Layers or nodes sharing one tensor.
SHARED_LAYERS = 300
#: Layers of overlapping views: few enough that their channels stay under the readers' cap on
#: channels in all, so that the overlap is what is refused.
OVERLAPPING_LAYERS = 12
ONNX_SHARED_NODES = 1_000
#: Channels of each shared tensor: 1 MiB of float32, so each copy per layer costs a MiB.
SHARED_CHANNELS = 1 << 18
#: A deflated storage's inflated size.
BOMB_BYTES = 1 << 30

_PROTO2 = b"\x80\x02"


# --- containers ------------------------------------------------------------------------------


def write_zip(path: Path, members: Sequence[tuple[str, bytes | tuple[bytes, int, int]]]) -> Path:
    """A zip archive, written by hand so that a member can be raw deflate data: each member is
    its bytes (stored) or ``(deflated, crc32, inflated size)``."""
    local, central = bytearray(), bytearray()
    for name, content in members:
        encoded = name.encode()
        if isinstance(content, bytes):
            method, data, crc, size = 0, content, zlib.crc32(content), len(content)
        else:
            method, (data, crc, size) = 8, content
        offset = len(local)
        local += struct.pack(
            "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, len(data), size,
            len(encoded), 0,
        )  # fmt: skip
        local += encoded + data
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, len(data), size,
            len(encoded), 0, 0, 0, 0, 0, offset,
        )  # fmt: skip
        central += encoded
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central), len(local), 0
    )
    path.write_bytes(bytes(local + central + end))
    return path


def deflated(size: int, byte: bytes = b"\x00") -> tuple[bytes, int, int]:
    """``size`` copies of ``byte`` (a multiple of 1 MiB) as raw deflate data, about 1,000 times
    smaller: one self-contained block repeated, then an empty final block."""
    block = byte * (1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(size >> 20):
        crc = zlib.crc32(block, crc)
    return chunk * (size >> 20) + b"\x03\x00", crc, size


def torch_zip(
    path: Path, data_pkl: bytes, storages: dict[str, Any], extra: Sequence[str] = ()
) -> Path:
    """``torch.save``'s zip layout around a pickle; ``extra`` adds empty members (TorchScript's
    ``constants.pkl`` and ``code/``)."""
    members: list[tuple[str, bytes | tuple[bytes, int, int]]] = [
        ("archive/data.pkl", data_pkl),
        ("archive/byteorder", b"little"),
    ]
    members += [(f"archive/data/{key}", value) for key, value in storages.items()]
    members += [(f"archive/{name}", b"") for name in extra]
    return write_zip(path, members)


def torch_legacy(path: Path, obj_pickle: bytes, storages: dict[str, bytes], itemsize: int) -> Path:
    """``torch.save``'s legacy layout around an object pickle."""
    import pickle

    parts = [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        obj_pickle,
        pickle.dumps(list(storages), protocol=2),
    ]
    for raw in storages.values():
        parts.append(struct.pack("<q", len(raw) // itemsize) + raw)
    path.write_bytes(b"".join(parts))
    return path


# --- pickles ---------------------------------------------------------------------------------


def _shared_state_dict(
    layers: int, numel: int, legacy: bool = False, spread: bool = False
) -> bytes:
    """A state dict of ``layers`` BatchNorm layers whose every tensor views storage ``0``: the
    same view, or (``spread``) a different, overlapping one per layer."""
    state: dict[str, Any] = {}
    values = np.zeros(SHARED_CHANNELS, dtype="float32")
    for layer in range(layers):
        offset = layer if spread else 0
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            state[f"layer{layer}.bn.{leaf}"] = Tensor("0", values, offset=offset, numel=numel)
    return dumps(state, legacy=legacy)


def _flood(body: bytes, setup: bytes = b"") -> bytes:
    return _PROTO2 + setup + body + b"N."


def empty_dict_flood(count: int = 8_000_000) -> bytes:
    """Millions of ``EMPTY_DICT`` opcodes: one byte each, an object each on the stack."""
    return _PROTO2 + b"}" * count + b"."


def ordered_dict_rebuilds(pairs: int = 100_000, calls: int = 20_000) -> bytes:
    """One list of pairs, then an ``OrderedDict`` rebuilt from it over and over: each rebuild
    copies every pair, so the work is ``pairs * calls`` for ``pairs + calls`` opcodes."""
    setup = b"ccollections\nOrderedDict\nq\x000]q\x01("
    setup += b"".join(b"J" + struct.pack("<i", index) + b"K\x01\x86" for index in range(pairs))
    setup += b"e0"
    return _flood(b"h\x00h\x01\x85R0" * calls, setup)


def build_flood(attributes: int = 100_000, builds: int = 20_000) -> bytes:
    """One dict of attributes, given to an ``OrderedDict`` by ``BUILD`` over and over."""
    setup = b"ccollections\nOrderedDict\n)Rq\x00}q\x01("
    setup += b"".join(
        b"X\x08\x00\x00\x00" + b"%08d" % index + b"K\x01" for index in range(attributes)
    )
    setup += b"u0h\x00"
    return _PROTO2 + setup + b"h\x01b" * builds + b"."


def logged_call_flood(calls: int = 200_000, argument_bytes: int = 4 << 20) -> bytes:
    """The same unknown function called over and over on one large string: each call, if
    rendered for the log, would copy the string."""
    setup = b"cposix\nsystem\nq\x00X" + struct.pack("<I", argument_bytes) + b"x" * argument_bytes
    setup += b"\x85q\x01"
    return _flood(b"h\x00h\x01R0" * calls, setup)


#: Every multiple of this prime hashes to 0 in CPython.
_HASH_MODULUS = 2**61 - 1


def _long1(value: int) -> bytes:
    encoded = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(encoded)]) + encoded


def hash_collision_flood(pairs: int = 200_000, key: str = "int") -> bytes:
    """One dict of ``pairs`` keys that all hash to 0 (multiples of 2**61 - 1, or 1-tuples of
    them): filling a plain dict with them takes quadratic time, minutes for a 2 MB pickle."""
    items = bytearray()
    for index in range(1, pairs + 1):
        items += _long1(index * _HASH_MODULUS) + (b"\x85" if key == "tuple" else b"") + b"N"
    return _PROTO2 + b"}(" + bytes(items) + b"u."


def call_chain(depth: int = 200_000) -> bytes:
    """Each call made on the result of the one before: naming each target walks the chain."""
    return _flood(b")R" * depth + b"0", b"cposix\nsystem\n")


# --- builders --------------------------------------------------------------------------------


def _inspect(path: Path) -> list[str]:
    """A JSON report: a file that is not refused must be reported as read."""
    return ["inspect", str(path), "--format", "json"]


def safetensors_huge_rank(folder: Path) -> list[str]:
    shape = ", ".join(["4611686018427387904"] * HUGE_RANK)
    header = (
        '{"bn.running_mean": {"dtype": "F32", "shape": [' + shape + '], "data_offsets": [0, 16]}}'
    ).encode()
    path = folder / "huge_rank.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    return _inspect(path)


def safetensors_shared_range(folder: Path) -> list[str]:
    """Hundreds of layers whose every entry spans the same bytes."""
    size = SHARED_CHANNELS * 4
    header: dict[str, Any] = {}
    for layer in range(SHARED_LAYERS):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            entry = {"dtype": "F32", "shape": [SHARED_CHANNELS], "data_offsets": [0, size]}
            header[f"layer{layer}.bn.{leaf}"] = entry
    encoded = json.dumps(header).encode()
    path = folder / "shared_range.safetensors"
    path.write_bytes(
        struct.pack("<Q", len(encoded)) + encoded + np.ones(SHARED_CHANNELS, "<f4").tobytes()
    )
    return _inspect(path)


def safetensors_nested_header(folder: Path) -> list[str]:
    header = b'{"__metadata__": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    path = folder / "nested.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return _inspect(path)


def _onnx_model(nodes: list[Any], initializers: list[Any]) -> bytes:
    from bncheck.readers.onnx import onnx_proto

    model = onnx_proto.model_class()(ir_version=8, producer_name="hostile")
    model.opset_import.add(domain="", version=15)
    model.graph.name = "g"
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    return bytes(model.SerializeToString())


def _bn_node(index: int, parameters: Sequence[str]) -> Any:
    from bncheck.readers.onnx import onnx_proto

    node = onnx_proto.message_class("NodeProto")(
        op_type="BatchNormalization", name=f"bn{index}", input=[f"x{index}", *parameters]
    )
    node.output.append(f"x{index + 1}")
    return node


def _tensor(name: str, dims: Sequence[int], **fields: Any) -> Any:
    from bncheck.readers.onnx import onnx_proto

    return onnx_proto.message_class("TensorProto")(name=name, dims=dims, data_type=1, **fields)


def onnx_huge_rank(folder: Path) -> list[str]:
    huge = _tensor("mean", [2**62] * HUGE_RANK, raw_data=bytes(16))
    small = _tensor("p", [4], raw_data=np.ones(4, "<f4").tobytes())
    path = folder / "huge_rank.onnx"
    path.write_bytes(_onnx_model([_bn_node(0, ["p", "p", "mean", "p"])], [huge, small]))
    return _inspect(path)


def onnx_shared_initializer(folder: Path) -> list[str]:
    shared = _tensor("p", [SHARED_CHANNELS], raw_data=np.ones(SHARED_CHANNELS, "<f4").tobytes())
    nodes = [_bn_node(index, ["p"] * 4) for index in range(ONNX_SHARED_NODES)]
    path = folder / "shared_initializer.onnx"
    path.write_bytes(_onnx_model(nodes, [shared]))
    return _inspect(path)


def onnx_overlapping_external_ranges(folder: Path) -> list[str]:
    """Hundreds of initializers, each naming almost the same external bytes (4 bytes apart)."""
    from bncheck.readers.onnx import onnx_proto

    count = SHARED_LAYERS * 4
    (folder / "weights.bin").write_bytes(np.ones(SHARED_CHANNELS + count, "<f4").tobytes())
    entry = onnx_proto.message_class("StringStringEntryProto")
    initializers, nodes = [], []
    for index in range(SHARED_LAYERS):
        names = [f"p{index}_{leaf}" for leaf in range(4)]
        for leaf, name in enumerate(names):
            where = [("location", "weights.bin"), ("offset", str((index * 4 + leaf) * 4))]
            initializers.append(
                _tensor(
                    name,
                    [SHARED_CHANNELS],
                    data_location=onnx_proto.EXTERNAL,
                    external_data=[entry(key=key, value=value) for key, value in where],
                )
            )
        nodes.append(_bn_node(index, names))
    path = folder / "overlapping_external.onnx"
    path.write_bytes(_onnx_model(nodes, initializers))
    return _inspect(path)


def pt_deflate_bomb(folder: Path) -> list[str]:
    """A BatchNorm tensor at the end of a storage that inflates from 1 MB to 1 GiB."""
    numel = BOMB_BYTES // 4
    values = np.zeros(4, dtype="float32")
    state = {
        f"bn.{leaf}": Tensor("0", values, offset=numel - 4, numel=numel)
        for leaf in ("weight", "bias", "running_mean", "running_var")
    }
    return _inspect(torch_zip(folder / "bomb.pt", dumps(state), {"0": deflated(BOMB_BYTES)}))


def pt_deflated_pickle(folder: Path) -> list[str]:
    """A 256 MB ``data.pkl`` of ``EMPTY_DICT`` opcodes, deflated into a quarter of a MB."""
    archive = folder / "pickle_bomb.pt"
    write_zip(archive, [("archive/data.pkl", deflated(256 << 20, b"}"))])
    return _inspect(archive)


def pt_shared_storage(folder: Path) -> list[str]:
    """300 layers whose every tensor is the same view of one deflated storage."""
    numel = SHARED_CHANNELS * 4
    data = _shared_state_dict(SHARED_LAYERS, numel)
    storage = deflated(numel * 4)
    return _inspect(torch_zip(folder / "shared_storage.pt", data, {"0": storage}))


def pt_overlapping_views(folder: Path) -> list[str]:
    """Layers each a different view of one storage, overlapping almost entirely."""
    numel = SHARED_CHANNELS + OVERLAPPING_LAYERS
    data = _shared_state_dict(OVERLAPPING_LAYERS, numel, spread=True)
    storage = np.ones(numel, "<f4").tobytes()
    return _inspect(torch_zip(folder / "overlapping_views.pt", data, {"0": storage}))


def pt_legacy_shared_storage(folder: Path) -> list[str]:
    numel = SHARED_CHANNELS
    data = _shared_state_dict(SHARED_LAYERS, numel, legacy=True)
    storage = np.ones(numel, "<f4").tobytes()
    return _inspect(torch_legacy(folder / "legacy_shared.pt", data, {"0": storage}, 4))


def pt_legacy_overlapping_views(folder: Path) -> list[str]:
    numel = SHARED_CHANNELS + OVERLAPPING_LAYERS
    data = _shared_state_dict(OVERLAPPING_LAYERS, numel, legacy=True, spread=True)
    storage = np.ones(numel, "<f4").tobytes()
    return _inspect(torch_legacy(folder / "legacy_overlapping.pt", data, {"0": storage}, 4))


def _pickle_case(
    name: str, pickle: Callable[[], bytes], codes: frozenset[int], container: str
) -> HostileCase:
    def build(folder: Path) -> list[str]:
        path = folder / f"{name}.pt"
        if container == "legacy":
            return _inspect(torch_legacy(path, pickle(), {}, 4))
        extra = ("constants.pkl", "code/model.py") if container == "torchscript" else ()
        return _inspect(torch_zip(path, pickle(), {}, extra))

    return HostileCase(f"pt-{container}-{name}", build, codes=codes)


#: Floods that exceed the pickle budget are refused; calls that are only logged make a report
#: whose BN019 lists each function once (exit 1); keys built to collide are read (no layers).
_FLOODS: dict[str, tuple[Callable[[], bytes], frozenset[int]]] = {
    "empty-dict-flood": (empty_dict_flood, frozenset({3})),
    "ordered-dict-rebuilds": (ordered_dict_rebuilds, frozenset({3})),
    "build-flood": (build_flood, frozenset({3})),
    "logged-call-flood": (logged_call_flood, frozenset({1})),
    "call-chain": (call_chain, frozenset({1})),
    "hash-collision-int-keys": (hash_collision_flood, frozenset({0})),
    "hash-collision-tuple-keys": (lambda: hash_collision_flood(key="tuple"), frozenset({0})),
}

CASES: list[HostileCase] = [
    HostileCase("safetensors-huge-rank", safetensors_huge_rank, codes=frozenset({3})),
    HostileCase("safetensors-shared-range", safetensors_shared_range, codes=frozenset({3})),
    HostileCase("safetensors-nested-header", safetensors_nested_header, codes=frozenset({3})),
    HostileCase("onnx-huge-rank", onnx_huge_rank, codes=frozenset({3})),
    HostileCase("onnx-shared-initializer", onnx_shared_initializer, codes=frozenset({3})),
    HostileCase(
        "onnx-overlapping-external-ranges", onnx_overlapping_external_ranges, codes=frozenset({3})
    ),
    HostileCase("pt-deflate-bomb", pt_deflate_bomb, codes=frozenset({3})),
    HostileCase("pt-deflated-pickle", pt_deflated_pickle, codes=frozenset({3})),
    HostileCase("pt-shared-storage", pt_shared_storage, codes=frozenset({3})),
    HostileCase("pt-overlapping-views", pt_overlapping_views, codes=frozenset({3})),
    HostileCase("pt-legacy-shared-storage", pt_legacy_shared_storage, codes=frozenset({3})),
    HostileCase("pt-legacy-overlapping-views", pt_legacy_overlapping_views, codes=frozenset({3})),
    *(
        _pickle_case(name, flood, codes, container)
        for name, (flood, codes) in _FLOODS.items()
        for container in ("zip", "legacy", "torchscript")
    ),
]
