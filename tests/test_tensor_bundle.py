"""Checkpoints and SavedModel variables read without TensorFlow, with TensorFlow's own reader as
the oracle: every tensor bit-identical, every verdict the same."""

from __future__ import annotations

import dataclasses
import glob
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.readers import read_model
from bncheck.readers.codecs.crc32c import crc32c, crc32c_many, mask, unmask
from bncheck.readers.codecs.snappy import SnappyError, decompress
from bncheck.readers.tensorflow import checkpoint as checkpoint_reader
from bncheck.readers.tensorflow import savedmodel as savedmodel_reader
from bncheck.readers.tensorflow.sstable import TableError, read_table
from bncheck.readers.tensorflow.tensor_bundle import TensorBundle
from tests.bundle_tools import (
    DT_BFLOAT16,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT32,
    DT_STRING,
    DT_UINT8,
    Tensor,
    snappy_compress,
    tensors_of,
    write_bundle,
    write_table,
)
from tests.conftest import FIXTURES
from tests.hardening.mutations import build_tensorflow_corpus

CHECKPOINTS = FIXTURES / "checkpoints"
#: Every tensor bundle among the fixtures: checkpoints and SavedModel variables.
BUNDLES = sorted(str(p)[: -len(".index")] for p in FIXTURES.rglob("*.index"))
#: Every checkpoint and SavedModel among the fixtures, as a user names it.
MODELS = sorted(
    {str(Path(p).parent.parent if Path(p).parent.name == "variables" else Path(p).parent)
     for p in BUNDLES}
)  # fmt: skip


def test_fixture_bundles_are_found() -> None:
    assert len(BUNDLES) >= 9
    assert {Path(m).name for m in MODELS} >= {
        "tf1_saver_all",
        "keras3_object",
        "tfkeras_weights",
        "keras3_export",
        "tfkeras_savedmodel",
        "stale_stats_export",
        "tf_keras_savedmodel",
    }


# --- The oracle -------------------------------------------------------------------------------


def tensorflow_values(prefix: str) -> dict[str, Any]:
    """Every tensor as ``tf.train.load_checkpoint(prefix).get_tensor`` gives it."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def assert_same_tensors(prefix: str, values: dict[str, Any] | None = None) -> None:
    """bncheck's reader gives exactly TensorFlow's keys, shapes and bytes."""
    import tensorflow as tf

    expected = tensorflow_values(prefix) if values is None else values
    dtypes = tf.train.load_checkpoint(prefix).get_variable_to_dtype_map()
    bundle = TensorBundle(prefix)
    assert sorted(bundle.entries) == sorted(expected)
    for key, value in expected.items():
        entry = bundle.entries[key]
        assert entry.type.name == dtypes[key].name, key
        assert entry.shape == np.shape(value), key
        if dtypes[key] == tf.string:
            elements = [value] if isinstance(value, bytes) else [bytes(v) for v in np.ravel(value)]
            assert bundle.read_strings(key) == elements, key
            continue
        ours = bundle.read_arrays([key])[key]
        theirs = np.asarray(value)
        if dtypes[key] == tf.bfloat16:  # numpy has no bfloat16: both as float32, exactly
            theirs = theirs.astype(np.float32)
        assert ours.dtype == theirs.dtype, key
        assert ours.tobytes() == theirs.tobytes(), key


@pytest.mark.parametrize("prefix", BUNDLES, ids=lambda p: str(Path(p).relative_to(FIXTURES)))
def test_fixture_tensors_are_bit_identical_to_tensorflow(prefix: str) -> None:
    assert_same_tensors(prefix)


class TensorFlowCheckpoint:
    """bncheck's checkpoint reader as it was before it read bundles itself: TensorFlow's reader,
    after checking that every data shard is there."""

    def __init__(self, prefix: str) -> None:
        import tensorflow as tf

        self.prefix = prefix
        shards = {}
        for data in glob.glob(glob.escape(prefix) + ".data-*-of-*"):
            found = re.match(r"^(.*)\.data-(\d{5})-of-(\d{5})$", data)
            if found and found.group(1) == prefix:
                shards[int(found.group(2))] = int(found.group(3))
        if set(shards) != set(range(max(shards.values(), default=1))):
            raise ModelReadError("missing checkpoint data shard")
        try:
            self._reader = tf.train.load_checkpoint(prefix)
            self.shapes = {
                key: tuple(shape) for key, shape in self._reader.get_variable_to_shape_map().items()
            }
            self._dtypes = self._reader.get_variable_to_dtype_map()
        except tf.errors.OpError as exc:
            raise ModelReadError(f"corrupt checkpoint index ({exc.message})") from None

    def object_graph(self) -> Any:
        from tensorflow.core.protobuf import trackable_object_graph_pb2

        if checkpoint_reader.OBJECT_GRAPH_KEY not in self.shapes:
            return None
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(self._tensor(checkpoint_reader.OBJECT_GRAPH_KEY))
        return graph

    def read_arrays(self, keys: list[str]) -> dict[str, np.ndarray]:
        arrays = {}
        for key in keys:
            dtype = self._dtypes[key]
            size = int(np.prod(self.shapes[key]))
            if not (dtype.is_floating or dtype.is_integer) or not 0 < size <= 1 << 24:
                raise ModelReadError(f"{key} is not a BatchNorm array")
            array = np.asarray(self._tensor(key))
            floats = array.dtype.kind == "f" and array.itemsize >= 4
            arrays[key] = array if floats else array.astype("float32")
        return arrays

    def _tensor(self, key: str) -> Any:
        import tensorflow as tf

        try:
            return self._reader.get_tensor(key)
        except (tf.errors.OpError, ValueError) as exc:
            raise ModelReadError(f"cannot read {key}: {exc}") from None


def canonical(description: ModelDescription) -> Any:
    """Everything a description says, arrays as their exact bytes."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return (value.dtype.str, value.shape, value.tobytes())
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(description)


def outcome(path: Path) -> Any:
    """What bncheck makes of a model: its whole description, or that it is unreadable."""
    try:
        return canonical(read_model(str(path)))
    except ModelReadError:
        return "unreadable"


def oracle_outcome(path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_reader, "CheckpointFile", TensorFlowCheckpoint)
        patch.setattr(savedmodel_reader, "CheckpointFile", TensorFlowCheckpoint)
        return outcome(path)


@pytest.mark.parametrize("model", MODELS, ids=lambda p: str(Path(p).relative_to(FIXTURES)))
def test_fixture_descriptions_match_tensorflows_reader(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = outcome(Path(model))
    assert ours != "unreadable"
    assert ours == oracle_outcome(Path(model), monkeypatch)


def mutated_copies(directory: Path, seed: int = 5) -> list[tuple[str, Path]]:
    """Each fixture bundle with one bit flipped, or cut short, at random places in its index,
    its data shard and (SavedModels) its saved_model.pb."""
    rng = random.Random(seed)
    cases: list[tuple[str, Path]] = []
    for model in MODELS:
        source = Path(model)
        prefix = "variables/variables" if (source / "variables").is_dir() else None
        if prefix is None:
            [index] = source.glob("*.index")
            prefix = index.name[: -len(".index")]
        members = [f"{prefix}.index", f"{prefix}.data-00000-of-00001"]
        if (source / "saved_model.pb").is_file() and not (source / "keras_metadata.pb").exists():
            members.append("saved_model.pb")
        for member in members:
            data = (source / member).read_bytes()
            edits = []
            for _ in range(8):
                flipped, position = bytearray(data), rng.randrange(len(data))
                flipped[position] ^= 1 << rng.randrange(8)
                edits.append((f"bit flipped at {position}", bytes(flipped)))
            for _ in range(4):
                position = rng.randrange(len(data))
                edits.append((f"cut at {position}", data[:position]))
            for what, content in edits:
                target = directory / f"{len(cases):04d}"
                shutil.copytree(source, target)
                (target / member).write_bytes(content)
                cases.append((f"{source.name}/{member}: {what}", target))
    return cases


def test_corrupted_checkpoints_get_tensorflows_verdict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hardening corpus and random damage to every fixture: the same description or the
    same refusal, but for one difference on purpose. A data shard shorter than its index says
    cannot be restored; TensorFlow notices only when it reads a tensor past the end, bncheck
    checks every entry against the shard's size when it opens the checkpoint."""
    cases = [(c.name, c.path) for c in build_tensorflow_corpus(tmp_path / "corpus")]
    cases += mutated_copies(tmp_path / "random")
    differ: list[str] = []
    stricter: list[str] = []
    unreadable = 0
    for name, path in cases:
        ours, theirs = outcome(path), oracle_outcome(path, monkeypatch)
        unreadable += ours == "unreadable"
        if ours == theirs:
            continue
        if ours == "unreadable" and "truncated checkpoint data shard" in read_error(path):
            stricter.append(name)
            continue
        differ.append(f"{name}: bncheck {_verdict(ours)}, TensorFlow {_verdict(theirs)}")
    assert not differ, "\n".join(differ)
    # The one difference comes only from a data shard cut short (4 of the 12 random edits of
    # each shard, and one corpus case per fixture); the cases exercise both outcomes.
    assert all(".data-" in name or "data shard cut" in name for name in stricter), stricter
    assert len(cases) // 4 < unreadable < len(cases) and len(stricter) < len(cases) // 10


def read_error(path: Path) -> str:
    try:
        read_model(str(path))
    except ModelReadError as exc:
        return str(exc)
    return ""


def _verdict(result: Any) -> str:
    return result if isinstance(result, str) else "readable"


# --- What TensorFlow reads but no longer writes -----------------------------------------------


def extra_tensors() -> dict[str, Tensor]:
    """Types and shapes the fixtures lack, BatchNorm variables in every float type among them."""
    return {
        "bn_half/moving_variance": Tensor(DT_HALF, (3,), np.array([1.5, 2.0**-24, 65504], "f2")),
        "bn_bf16/moving_mean": Tensor(
            DT_BFLOAT16, (2, 2), np.array([[1.5, -2], [3.25, 1e30]], "f4")
        ),
        "bn_f64/gamma": Tensor(DT_DOUBLE, (2,), np.array([1 / 3, 1e-300])),
        "counts": Tensor(DT_INT32, (2, 3), np.arange(-3, 3, dtype="i4").reshape(2, 3)),
        "pixels": Tensor(DT_UINT8, (4,), np.array([0, 1, 128, 255], "u1")),
        "empty": Tensor(DT_FLOAT, (0, 5), np.zeros((0, 5), "f4")),
        "names": Tensor(DT_STRING, (3,), [b"", b"\x00\xff" * 200, "é".encode()]),
    }


@pytest.mark.parametrize(
    "layout",
    [
        {},
        {"compress": True},
        {"big_endian": True},
        {"shards": 3},
        {"block_bytes": 40},
        {"compress": True, "big_endian": True, "shards": 2, "block_bytes": 100},
    ],
    ids=repr,
)
def test_bundle_layouts_are_bit_identical_to_tensorflow(
    layout: dict[str, Any], tmp_path: Path
) -> None:
    """Snappy-compressed blocks (TensorFlow 1.1 wrote them), big-endian data (s390x), several
    shards and many small blocks, each read back by TensorFlow first."""
    tensors = tensors_of(str(CHECKPOINTS / "keras3_object" / "ckpt-1")) | extra_tensors()
    prefix = tmp_path / "ckpt-1"
    write_bundle(prefix, tensors, **layout)
    expected = tensorflow_values(str(prefix))
    assert sorted(expected) == sorted(tensors)
    assert_same_tensors(str(prefix), expected)


def test_float16_and_bfloat16_batchnorm_reads_like_tensorflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tensors = tensors_of(str(CHECKPOINTS / "tf1_saver_all" / "model.ckpt-300"))
    for key, tensor in tensors.items():
        if key.startswith("conv2/") and tensor.dtype == DT_FLOAT:
            tensor.dtype = DT_HALF
        if key.startswith("fc/") and tensor.dtype == DT_FLOAT:
            tensor.dtype = DT_BFLOAT16
    write_bundle(tmp_path / "model.ckpt-300", tensors)
    ours = outcome(tmp_path)
    assert ours != "unreadable" and ours == oracle_outcome(tmp_path, monkeypatch)


# --- The pieces -------------------------------------------------------------------------------


def test_crc32c_known_values_and_lanes() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    data = random.Random(3).randbytes(300_001)
    byte_by_byte = 0
    for start in range(0, len(data), 1000):  # short pieces: never the lanes
        byte_by_byte = crc32c(data[start : start + 1000], byte_by_byte)
    assert crc32c(data) == byte_by_byte
    assert crc32c(data[77_777:], crc32c(data[:77_777])) == byte_by_byte
    assert unmask(mask(0xDEADBEEF)) == 0xDEADBEEF and mask(0) != 0
    # Many buffers at once, lengths shared or not, with and without a tail past the lanes.
    rng = random.Random(5)
    buffers = [rng.randbytes(n) for n in (0, 1, 33, 64, 1000, 1024, 4000, 8192) * 3]
    assert crc32c_many(buffers) == [crc32c(buffer) for buffer in buffers]


def test_snappy_round_trip_and_malformed_input() -> None:
    rng = random.Random(4)
    for data in (b"", b"a", rng.randbytes(5000), b"abc" * 3000 + rng.randbytes(70) * 40):
        assert decompress(snappy_compress(data)) == data
    good = snappy_compress(b"abcd" * 50)
    for bad in (b"", b"\xff" * 6, good[:-1], good + b"\x00", b"\x05\x08abc", b"\x08\x0e\x09\x00"):
        with pytest.raises(SnappyError):
            decompress(bad)


def test_table_layout_checks() -> None:
    entries = [(f"key{i:03d}".encode(), bytes([i]) * (i % 7)) for i in range(200)]
    table = write_table(entries, block_bytes=64, restart_interval=4)
    assert read_table(table) == dict(entries)
    body, footer = table[:-48], table[-48:]
    broken = {
        "file is too short": table[:47],
        "bad magic number": table[:-1] + b"\x00",
        "block checksum mismatch": bytes([table[0] ^ 1]) + table[1:],
        "past the end of the file": body[:100] + footer,
    }
    for reason, data in broken.items():
        with pytest.raises(TableError, match=reason):
            read_table(data)
    unsorted = write_table(list(reversed(entries)), block_bytes=64)
    with pytest.raises(TableError, match="out of order"):
        read_table(unsorted)


# --- Files that do not add up -----------------------------------------------------------------


def edited(key: str, change: Callable[[Any], None]) -> Callable[[str, Any], None]:
    return lambda name, entry: change(entry) if name == key else None


BN_KEY = "bn/moving_variance"


def bad_bundles() -> dict[str, tuple[dict[str, Any], str]]:
    """Well-checksummed bundles that say something impossible, and what bncheck answers."""
    return {
        "negative dimension": (
            {"edit_entry": edited(BN_KEY, lambda e: e.shape.dim.add(size=-1))},
            "invalid tensor shape",
        ),
        "size does not fit the shape": (
            {"edit_entry": edited(BN_KEY, lambda e: setattr(e, "size", 12))},
            "is stored in 12 bytes; float32 [4] takes 16",
        ),
        "entry past the end of the shard": (
            {"edit_entry": edited(BN_KEY, lambda e: setattr(e, "offset", 1000))},
            "truncated checkpoint data shard ckpt.data-00000-of-00001",
        ),
        "shard that does not exist": (
            {"edit_entry": edited(BN_KEY, lambda e: setattr(e, "shard_id", 4))},
            "outside a bundle of 1 shards",
        ),
        "wrong checksum": (
            {"edit_entry": edited(BN_KEY, lambda e: setattr(e, "crc32c", e.crc32c ^ 1))},
            "cannot read bn/moving_variance from the checkpoint data of ckpt (checksum mismatch)",
        ),
        "text where a number belongs": (
            {"edit_entry": edited(BN_KEY, lambda e: setattr(e, "dtype", DT_STRING))},
            "bn/moving_variance has non-numeric type string",
        ),
        "partitioned variable": (
            {"edit_entry": edited(BN_KEY, lambda e: e.slices.add())},
            "bn/moving_variance is a partitioned variable saved in 1 slices",
        ),
    }


def batchnorm_tensors() -> dict[str, Tensor]:
    values = np.array([0.5, 1.0, 2.0, 4.0], "f4")
    return {f"bn/{name}": Tensor(DT_FLOAT, (4,), values) for name in
            ("gamma", "beta", "moving_mean", "moving_variance")}  # fmt: skip


@pytest.mark.parametrize("case", sorted(bad_bundles()))
def test_impossible_bundles_are_one_line_errors(case: str, tmp_path: Path, run_cli: Any) -> None:
    options, message = bad_bundles()[case]
    write_bundle(tmp_path / "ckpt", batchnorm_tensors(), **options)
    result = run_cli("inspect", tmp_path / "ckpt")
    assert result.code == 3, result.out
    [line] = result.err.splitlines()
    assert line.startswith(f"bncheck: error: {tmp_path / 'ckpt'}: ") and message in line


def test_header_checks(tmp_path: Path) -> None:
    write_bundle(tmp_path / "ckpt", batchnorm_tensors())
    assert sorted(TensorBundle(str(tmp_path / "ckpt")).entries) == sorted(batchnorm_tensors())
    index = tmp_path / "ckpt.index"
    entries = read_table(index.read_bytes())
    from tensorflow.core.protobuf import tensor_bundle_pb2

    header = tensor_bundle_pb2.BundleHeaderProto.FromString(entries[b""])
    for change, message in (
        (lambda h: h.version.__setattr__("min_consumer", 2), "needs a newer reader"),
        (lambda h: h.version.bad_consumers.append(1), "disallows readers of format version 1"),
        (lambda h: setattr(h, "num_shards", 0), "claims 0 data shards"),
    ):
        edited_header = tensor_bundle_pb2.BundleHeaderProto()
        edited_header.CopyFrom(header)
        change(edited_header)
        rows = {**entries, b"": edited_header.SerializeToString()}
        index.write_bytes(write_table(sorted(rows.items())))
        with pytest.raises(ModelReadError, match=message):
            TensorBundle(str(tmp_path / "ckpt"))
    index.write_bytes(write_table(sorted((k, v) for k, v in entries.items() if k)))
    with pytest.raises(ModelReadError, match="no header entry"):
        TensorBundle(str(tmp_path / "ckpt"))


def test_string_tensor_checks(tmp_path: Path) -> None:
    tensors = {"names": Tensor(DT_STRING, (2,), [b"abc", b"de"])}
    write_bundle(tmp_path / "ckpt", tensors)
    assert TensorBundle(str(tmp_path / "ckpt")).read_strings("names") == [b"abc", b"de"]
    data = tmp_path / "ckpt.data-00000-of-00001"
    stored = data.read_bytes()  # lengths 3 and 2, their checksum, "abcde"
    for damaged, message in (
        (b"\x04" + stored[1:], "lengths' checksum does not match"),
        (stored[:-1] + b"x", "checksum mismatch"),
    ):
        data.write_bytes(damaged)
        with pytest.raises(ModelReadError, match=message):
            TensorBundle(str(tmp_path / "ckpt")).read_strings("names")
    # A shape claiming more strings than the stored bytes could hold is refused before reading.
    write_bundle(tmp_path / "huge", tensors, edit_entry=edited("names", huge_shape))
    with pytest.raises(ModelReadError, match="2000000000000 strings in 11 bytes"):
        TensorBundle(str(tmp_path / "huge")).read_strings("names")


def huge_shape(entry: Any) -> None:
    entry.shape.dim[0].size = 2 * 10**12
