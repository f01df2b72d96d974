"""Probe data: array files matched to inputs, synthetic batches, shapes from the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bncheck.errors import UsageError
from bncheck.probe.data import (
    ArraySource,
    InputSpec,
    parse_input_shape,
    pick_rows,
    resolve_shape,
    shuffled_batches,
    synthetic_batch,
)

IMAGE = InputSpec("image", (None, 8, 8, 1), "float32")
ROWS = InputSpec("rows", (None, 8, 8), "float32")


def test_npy_feeds_the_single_input(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((5, 8, 8, 1), dtype="float32"))
    [array] = ArraySource(str(path)).match([IMAGE])
    assert array.shape == (5, 8, 8, 1)


def test_npz_feeds_inputs_by_name(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, rows=np.zeros((4, 8, 8)), image=np.ones((4, 8, 8, 1)))
    image, rows = ArraySource(str(path)).match([IMAGE, ROWS])
    assert image.shape == (4, 8, 8, 1) and rows.shape == (4, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "specs", "message"),
    [
        ({"x": np.ones((4, 8, 8, 1))}, [IMAGE, ROWS], "has no array named 'image'"),
        ({"image": np.ones((4, 8, 8))}, [IMAGE], "does not fit input 'image'"),
        ({"image": np.ones((4, 8, 8, 1)), "rows": np.ones((3, 8, 8))}, [IMAGE, ROWS], "different"),
        ({"image": np.ones((0, 8, 8, 1))}, [IMAGE], "holds no samples"),
        ({"image": np.array([["a"] * 8] * 8)[None, ..., None]}, [IMAGE], "not numeric"),
    ],
)
def test_npz_mismatches_are_usage_errors(
    tmp_path: Path, arrays: dict, specs: list[InputSpec], message: str
) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=message):
        ArraySource(str(path)).match(specs)


def test_npy_for_a_multi_input_model_asks_for_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 8, 8, 1)))
    with pytest.raises(UsageError, match=r"2 inputs \(image, rows\); pass an .npz"):
        ArraySource(str(path)).match([IMAGE, ROWS])


@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such file"), (b"not numpy", "not a readable")]
)
def test_unreadable_data_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "x.npy"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        ArraySource(str(path))


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.ones((100, 8), dtype="float32"))
    assert isinstance(ArraySource(str(path)).arrays[None], np.memmap)


def test_pick_rows_is_random_but_seeded() -> None:
    data = [np.arange(100)]
    first = pick_rows(data, 10, seed=1)[0]
    assert len(set(first)) == 10
    assert np.array_equal(first, pick_rows(data, 10, seed=1)[0])
    assert not np.array_equal(first, pick_rows(data, 10, seed=2)[0])
    assert len(pick_rows(data, 500, seed=1)[0]) == 100


def test_shuffled_batches_cover_the_data_once() -> None:
    data = [np.arange(10), np.arange(10) * 2]
    batches = list(shuffled_batches(data, batch_size=4, seed=0, limit=None))
    assert [len(batch[0]) for batch in batches] == [4, 4, 2]
    assert sorted(np.concatenate([batch[0] for batch in batches])) == list(range(10))
    assert all(np.array_equal(batch[1], batch[0] * 2) for batch in batches)
    assert len(list(shuffled_batches(data, batch_size=4, seed=0, limit=2))) == 2


def test_synthetic_batch_follows_the_input_spec() -> None:
    image, rows = synthetic_batch([IMAGE, ROWS], 6, seed=0, shapes={})
    assert image.shape == (6, 8, 8, 1) and rows.shape == (6, 8, 8)
    assert image.dtype == np.float32
    assert np.array_equal(image, synthetic_batch([IMAGE], 6, seed=0, shapes={})[0])


def test_integer_inputs_need_real_data() -> None:
    tokens = InputSpec("tokens", (None, 16), "int32")
    with pytest.raises(UsageError, match="'tokens'.*pass real data with --data"):
        synthetic_batch([tokens], 4, seed=0, shapes={})


def test_unknown_dimensions_need_input_shape() -> None:
    open_image = InputSpec("image", (None, None, None, 3), "float32")
    with pytest.raises(UsageError, match="unknown dimensions: pass --input-shape image="):
        resolve_shape(open_image, {}, single=True)
    assert resolve_shape(open_image, {"image": (32, 32, 3)}, single=False) == (32, 32, 3)
    assert resolve_shape(open_image, {None: (16, 16, 3)}, single=True) == (16, 16, 3)
    with pytest.raises(UsageError, match="does not fit"):
        resolve_shape(open_image, {None: (16, 16, 1)}, single=True)


@pytest.mark.parametrize(
    ("text", "parsed"), [("8,8,1", (None, (8, 8, 1))), ("image=32,32,3", ("image", (32, 32, 3)))]
)
def test_parse_input_shape(text: str, parsed: tuple) -> None:
    assert parse_input_shape(text) == parsed


@pytest.mark.parametrize("text", ["8,x", "image=", "0,8", ""])
def test_bad_input_shapes(text: str) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shape(text)
