"""Hostile TensorFlow checkpoints and SavedModels, written without TensorFlow.

Each file is small on disk (large data shards are sparse) and describes far more than it holds:
keys that share ever longer prefixes, hundreds of tensors on one region, object graphs of
millions of strings, chains of 40,000 objects or nodes, a state file that leads outside its
folder. Each is read in seconds and modest memory, refused in one line or reported correctly.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bncheck.readers.codecs.crc32c import crc32c, mask
from bncheck.readers.tensorflow.checkpoint import MAX_OBJECT_GRAPH_BYTES
from bncheck.readers.tensorflow.sstable import TABLE_MAGIC
from bncheck.readers.tensorflow.tf_protos import message_class
from tests.bundle_tools import DT_FLOAT, DT_STRING, Tensor, tensor_bytes, varint, write_table
from tests.conftest import FIXTURES
from tests.hardening.hostile import HostileCase

OBJECT_GRAPH_KEY = b"_CHECKPOINTABLE_OBJECT_GRAPH"
_BN_ARRAYS = {"beta": 0.0, "gamma": 1.0, "moving_mean": 0.0, "moving_variance": 1.0}


def entry_proto(
    dtype: int, shape: Sequence[int], offset: int, size: int, crc: int, shard: int = 0
) -> bytes:
    entry = message_class("BundleEntryProto")(
        dtype=dtype, shard_id=shard, offset=offset, size=size, crc32c=mask(crc)
    )
    for dim in shape:
        entry.shape.dim.add(size=dim)
    result: bytes = entry.SerializeToString()
    return result


def header_proto(shards: int = 1) -> bytes:
    header = message_class("BundleHeaderProto")(num_shards=shards)
    header.version.producer = 1
    result: bytes = header.SerializeToString()
    return result


def write_index(prefix: Path, entries: Iterable[tuple[bytes, bytes]]) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    table = write_table([(b"", header_proto()), *sorted(entries)])
    Path(f"{prefix}.index").write_bytes(table)


def shard_path(prefix: Path) -> Path:
    return Path(f"{prefix}.data-00000-of-00001")


def write_sparse(path: Path, size: int) -> None:
    """A file of ``size`` zero bytes that takes no room on disk."""
    with open(path, "wb") as handle:
        handle.truncate(size)


def bn_checkpoint(
    prefix: Path, layers: Sequence[str], channels: int, extra: Mapping[bytes, Tensor] = {}
) -> None:
    """A healthy name-based checkpoint of BatchNorm layers (gamma 1, beta 0, mean 0,
    variance 1), plus ``extra`` tensors."""
    tensors = {
        f"{layer}/{name}".encode(): Tensor(DT_FLOAT, (channels,), np.full(channels, value))
        for layer in layers
        for name, value in _BN_ARRAYS.items()
    }
    tensors.update(extra)
    data = bytearray()
    entries = []
    for key, tensor in sorted(tensors.items()):
        stored, crc = tensor_bytes(tensor, big_endian=False)
        entries.append((key, entry_proto(tensor.dtype, tensor.shape, len(data), len(stored), crc)))
        data += stored
    write_index(prefix, entries)
    shard_path(prefix).write_bytes(bytes(data))


def raw_table(data_blocks: Sequence[tuple[bytes, bytes]]) -> bytes:
    """A table of data blocks given as ``(last key, contents)``, checksummed and indexed."""
    out = bytearray()

    def write_block(contents: bytes, kind: int = 0) -> bytes:
        handle = varint(len(out)) + varint(len(contents))
        trailer = bytes([kind])
        out.extend(contents + trailer + struct.pack("<I", mask(crc32c(contents + trailer))))
        return handle

    index = bytearray()
    for last_key, contents in data_blocks:
        handle = write_block(contents)
        index += varint(0) + varint(len(last_key)) + varint(len(handle)) + last_key + handle
    metaindex = write_block(struct.pack("<II", 0, 1))
    index_handle = write_block(bytes(index) + struct.pack("<II", 0, 1))
    footer = (metaindex + index_handle).ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    return bytes(out + footer)


# --- the cases -------------------------------------------------------------------------------


def prefix_shared_keys(folder: Path) -> list[str]:
    """One 16,000-byte key, then 200,000 entries each sharing all of the key before and adding
    a byte: 3 bytes each on disk, 3 GB of keys rebuilt one by one."""
    entries = bytearray()
    length = 16_000
    entries += varint(0) + varint(length) + varint(0) + b"k" * length
    for _ in range(200_000):
        entries += varint(length) + varint(1) + varint(0) + b"k"
        length += 1
    block = bytes(entries) + struct.pack("<II", 0, 1)
    prefix = folder / "ckpt"
    Path(f"{prefix}.index").write_bytes(raw_table([(b"l", block)]))
    shard_path(prefix).write_bytes(b"")
    return ["inspect", f"{prefix}.index"]


def many_entries(folder: Path) -> list[str]:
    """300,000 tiny entries: each a variable to describe."""
    prefix = folder / "ckpt"
    value = entry_proto(DT_FLOAT, (1,), 0, 4, crc32c(bytes(4)))
    write_index(prefix, ((b"v%07d" % n, value) for n in range(300_000)))
    shard_path(prefix).write_bytes(bytes(4))
    return ["inspect", f"{prefix}.index"]


def snappy_block_claiming_4gb(folder: Path) -> list[str]:
    """A Snappy-compressed data block whose preamble declares 4 GB inflated."""
    out = bytearray()
    contents = varint(0xFFFFFFFF) + b"\x00a"
    trailer = b"\x01"
    out += contents + trailer + struct.pack("<I", mask(crc32c(contents + trailer)))
    handle = varint(0) + varint(len(contents))
    metaindex_at = len(out)
    empty = struct.pack("<II", 0, 1)
    out += empty + b"\x00" + struct.pack("<I", mask(crc32c(empty + b"\x00")))
    index = varint(0) + varint(1) + varint(len(handle)) + b"z" + handle + empty
    index_at = len(out)
    out += index + b"\x00" + struct.pack("<I", mask(crc32c(index + b"\x00")))
    handles = varint(metaindex_at) + varint(len(empty)) + varint(index_at) + varint(len(index))
    out += handles.ljust(40, b"\0") + TABLE_MAGIC.to_bytes(8, "little")
    prefix = folder / "ckpt"
    Path(f"{prefix}.index").write_bytes(bytes(out))
    shard_path(prefix).write_bytes(b"")
    return ["inspect", f"{prefix}.index"]


def many_dimensions(folder: Path) -> list[str]:
    """A tensor of 80,000 dimensions of 2**62 each."""
    prefix = folder / "ckpt"
    write_index(prefix, [(b"bn/moving_mean", entry_proto(DT_FLOAT, [1 << 62] * 80_000, 0, 4, 0))])
    shard_path(prefix).write_bytes(bytes(4))
    return ["inspect", f"{prefix}.index"]


def _shared_region(folder: Path, layers: int, channels: int) -> Path:
    """``layers`` BatchNorm layers whose four arrays all lie on the same bytes of a sparse
    shard: zeros, so every layer reads as moving mean 0, variance 0, gamma 0, beta 0."""
    prefix = folder / "ckpt"
    size = 4 * channels
    crc = crc32c(bytes(size))
    write_index(
        prefix,
        (
            (f"bn{layer:03d}/{name}".encode(), entry_proto(DT_FLOAT, (channels,), 0, size, crc))
            for layer in range(layers)
            for name in _BN_ARRAYS
        ),
    )
    write_sparse(shard_path(prefix), size)
    return prefix


def shared_64mb_region(folder: Path) -> list[str]:
    """300 layers, 1,200 arrays, all on one 64 MB region: 77 GB if each were read."""
    prefix = _shared_region(folder, 300, 16 << 20)
    return ["inspect", f"{prefix}.index"]


def shared_small_region(folder: Path) -> list[str]:
    """300 layers on one 16 KB region: read once, reported in full."""
    prefix = _shared_region(folder, 300, 4096)
    return ["inspect", f"{prefix}.index", "--format", "json"]


def _with_object_graph(
    folder: Path, graph: bytes | None, declared: tuple[tuple[int, ...], int] | None
) -> Path:
    """A healthy checkpoint whose object graph is ``graph`` (stored), or a sparse region of
    ``declared`` (shape, bytes)."""
    prefix = folder / "ckpt"
    if graph is not None:
        extra = {OBJECT_GRAPH_KEY: Tensor(DT_STRING, (), [graph])}
        bn_checkpoint(prefix, ["bn"], 4, extra)
        return prefix
    assert declared is not None
    bn_checkpoint(prefix, ["bn"], 4)
    shape, size = declared
    shard = shard_path(prefix)
    offset = shard.stat().st_size
    table = write_table(
        [
            (b"", header_proto()),
            (OBJECT_GRAPH_KEY, entry_proto(DT_STRING, shape, offset, size, 0)),
            *sorted(_bn_entries(prefix)),
        ]
    )
    Path(f"{prefix}.index").write_bytes(table)
    with open(shard, "r+b") as handle:
        handle.truncate(offset + size)
    return prefix


def _bn_entries(prefix: Path) -> list[tuple[bytes, bytes]]:
    from bncheck.readers.tensorflow.sstable import read_table

    table = read_table(Path(f"{prefix}.index").read_bytes())
    return [(key, value) for key, value in table.items() if key]


def object_graph_20m_strings(folder: Path) -> list[str]:
    """An object graph declared as 20 million strings in 160 MB (sparse)."""
    prefix = _with_object_graph(folder, None, ((20_000_000,), 160_000_000))
    return ["inspect", f"{prefix}.index"]


def object_graph_160mb(folder: Path) -> list[str]:
    """An object graph of one string of 160 MB (sparse): 20 million empty strings' worth."""
    prefix = _with_object_graph(folder, None, ((), 160_000_000))
    return ["inspect", f"{prefix}.index"]


def object_graph_node_flood(folder: Path) -> list[str]:
    """An object graph just under the size cap of empty nodes: the most nodes per byte."""
    prefix = _with_object_graph(folder, b"\x0a\x00" * (MAX_OBJECT_GRAPH_BYTES // 2 - 8), None)
    return ["inspect", f"{prefix}.index"]


def object_graph_string_flood(folder: Path) -> list[str]:
    """An object graph just under the size cap, one node holding a million attributes of
    empty strings: 3 million strings to parse and walk."""
    attribute = b"\x12\x06\x0a\x00\x12\x00\x1a\x00"
    node = attribute * (MAX_OBJECT_GRAPH_BYTES // len(attribute) - 8)
    graph = b"\x0a" + varint(len(node)) + node
    prefix = _with_object_graph(folder, graph, None)
    return ["inspect", f"{prefix}.index", "--format", "json"]


def _saved_model_bytes(object_graph: bytes, graph_def: bytes) -> bytes:
    meta_graph = b"\x12" + varint(len(graph_def)) + graph_def
    meta_graph += b"\x3a" + varint(len(object_graph)) + object_graph
    return b"\x08\x01" + b"\x12" + varint(len(meta_graph)) + meta_graph


def _saved_model(folder: Path, keras_chain: bool) -> Path:
    """A SavedModel whose object graph is a chain of 40,000 objects (each a Keras layer when
    ``keras_chain``) and whose graph is a chain of 40,000 nodes, with one healthy BatchNorm
    layer in its variables."""
    graph = message_class("SavedObjectGraph")()
    for number in range(40_000):
        node = graph.nodes.add()
        node.children.add(node_id=number + 1, local_name=f"c{number}")
        if keras_chain or number == 1:
            node.user_object.identifier = "_tf_keras_layer"
            node.user_object.metadata = json.dumps({"class_name": "Dense", "name": f"d{number}"})
    graph.nodes.add()
    graph_def = message_class("GraphDef")()
    for number in range(40_000):
        graph_def.node.add(name=f"n{number}", op="Identity", input=[f"n{number - 1}"])
    root = folder / "model"
    root.mkdir()
    (root / "saved_model.pb").write_bytes(
        _saved_model_bytes(graph.SerializeToString(), graph_def.SerializeToString())
    )
    bn_checkpoint(root / "variables" / "variables", ["bn"], 4)
    return root


def saved_model_40k_chain(folder: Path) -> list[str]:
    return ["inspect", str(_saved_model(folder, keras_chain=False)), "--format", "json"]


def saved_model_40k_keras_chain(folder: Path) -> list[str]:
    return ["inspect", str(_saved_model(folder, keras_chain=True))]


def _state_file_case(folder: Path, recorded: str) -> list[str]:
    """A folder holding only a ``checkpoint`` state file that records ``recorded``; a healthy
    checkpoint lies at ``outside/victim`` beside the folder."""
    bn_checkpoint(folder / "outside" / "victim", ["bn"], 4)
    run = folder / "run"
    run.mkdir()
    (run / "checkpoint").write_text(f'model_checkpoint_path: "{recorded}"\n')
    return ["inspect", str(run)]


def state_file_dot_dot(folder: Path) -> list[str]:
    return _state_file_case(folder, "../outside/victim")


def state_file_absolute(folder: Path) -> list[str]:
    return _state_file_case(folder, str(folder / "outside" / "victim"))


def state_file_symlink(folder: Path) -> list[str]:
    """The recorded name lies in the folder, but its index is a link to one outside."""
    args = _state_file_case(folder, "victim")
    run = folder / "run"
    (run / "victim.index").symlink_to(folder / "outside" / "victim.index")
    (run / "victim.data-00000-of-00001").symlink_to(
        folder / "outside" / "victim.data-00000-of-00001"
    )
    return args


def savedmodel_variables_outside(folder: Path) -> list[str]:
    """A SavedModel whose variables/ is a link to a folder beside it: reading would print the
    statistics of a checkpoint the folder's maker chose, from anywhere the runner can read."""
    model, outside = folder / "model", folder / "outside"
    shutil.copytree(FIXTURES / "checkpoints/keras3_export", model)
    shutil.move(model / "variables", outside)
    (model / "variables").symlink_to(outside)
    return ["inspect", str(model)]


def savedmodel_index_outside(folder: Path) -> list[str]:
    """The same with variables.index and its data shard linked one by one."""
    model, outside = folder / "model", folder / "outside"
    shutil.copytree(FIXTURES / "checkpoints/keras3_export", model)
    outside.mkdir()
    for file in sorted((model / "variables").iterdir()):
        shutil.move(file, outside / file.name)
        file.symlink_to(outside / file.name)
    return ["inspect", str(model)]


REFUSED = frozenset({3})
REPORTED = frozenset({0, 1})

CASES: list[HostileCase] = [
    HostileCase("ckpt-prefix-shared-keys", prefix_shared_keys, REFUSED),
    HostileCase("ckpt-300k-entries", many_entries, REFUSED),
    HostileCase("ckpt-snappy-block-claims-4gb", snappy_block_claiming_4gb, REFUSED),
    HostileCase("ckpt-80k-dimensions", many_dimensions, REFUSED),
    HostileCase("ckpt-300-layers-on-one-64mb-region", shared_64mb_region, REFUSED),
    HostileCase("ckpt-300-layers-on-one-16kb-region", shared_small_region, REPORTED),
    HostileCase("ckpt-object-graph-20m-strings", object_graph_20m_strings, REFUSED),
    HostileCase("ckpt-object-graph-160mb", object_graph_160mb, REFUSED),
    HostileCase("ckpt-object-graph-string-flood", object_graph_string_flood, REPORTED),
    HostileCase("ckpt-object-graph-node-flood", object_graph_node_flood, REFUSED),
    HostileCase("savedmodel-40k-object-chain", saved_model_40k_chain, REPORTED),
    HostileCase("savedmodel-40k-keras-object-chain", saved_model_40k_keras_chain, REFUSED),
    HostileCase("ckpt-state-file-dot-dot", state_file_dot_dot, REFUSED),
    HostileCase("ckpt-state-file-absolute", state_file_absolute, REFUSED),
    HostileCase("ckpt-state-file-symlink", state_file_symlink, REFUSED),
    HostileCase("savedmodel-variables-linked-outside", savedmodel_variables_outside, REFUSED),
    HostileCase("savedmodel-index-linked-outside", savedmodel_index_outside, REFUSED),
]
