"""Probe data: array files matched to inputs, labels, batches, synthetic batches, shapes."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.errors import UsageError
from bncheck.probe.data import (
    ArrayData,
    DataOptions,
    InputSpec,
    open_data,
    parse_input_shape,
    resolve_shape,
    synthetic_batch,
)

IMAGE = InputSpec("image", (None, 8, 8, 1), "float32")
ROWS = InputSpec("rows", (None, 8, 8), "float32")


def varied(shape: tuple[int, ...], dtype: str = "float32") -> np.ndarray:
    """Samples that differ: data whose samples are all the same is refused."""
    return np.random.default_rng(0).random(shape).astype(dtype)


def data(path: Path, specs: list[InputSpec] | None = None, **options: Any) -> ArrayData:
    opened = open_data(DataOptions(str(path), **options), [IMAGE] if specs is None else specs)
    assert isinstance(opened, ArrayData)
    return opened


def test_npy_feeds_the_single_input(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, varied((5, 8, 8, 1), dtype="float32"))
    [array] = data(path).inputs
    assert array.shape == (5, 8, 8, 1)
    assert not data(path).labelled


def test_npz_feeds_inputs_by_name(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, rows=np.zeros((4, 8, 8)), image=varied((4, 8, 8, 1)))
    image, rows = data(path, [IMAGE, ROWS]).inputs
    assert image.shape == (4, 8, 8, 1) and rows.shape == (4, 8, 8)


def test_npz_with_x_and_y_is_labelled_data(tmp_path: Path) -> None:
    path = tmp_path / "digits.npz"
    np.savez(path, x=varied((6, 8, 8, 1)), y=np.arange(6))
    opened = data(path)
    assert opened.labelled
    [batch] = list(opened.batches(6, seed=0, samples=None))
    assert batch.labels is not None
    assert sorted(batch.labels.tolist()) == list(range(6))


def test_labels_file_goes_with_an_npy(tmp_path: Path) -> None:
    np.save(
        tmp_path / "x.npy",
        np.arange(10, dtype="float32").reshape(10, 1, 1, 1) * np.ones((1, 8, 8, 1)),
    )
    np.save(tmp_path / "y.npy", np.arange(10) * 2)
    opened = data(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))
    for batch in opened.batches(4, seed=3, samples=None):
        # each sample keeps its own label through the shuffle
        assert batch.labels is not None
        assert np.array_equal(batch.inputs[0][:, 0, 0, 0] * 2, batch.labels)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.arange(3), "3 labels for the 5 samples"),
        (np.array(["a"] * 5), "are not numeric"),
    ],
)
def test_bad_labels(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    np.save(tmp_path / "x.npy", varied((5, 8, 8, 1)))
    np.save(tmp_path / "y.npy", labels)
    with pytest.raises(UsageError, match=message):
        data(tmp_path / "x.npy", labels=str(tmp_path / "y.npy"))


def test_labels_twice_is_an_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=varied((5, 8, 8, 1)), y=np.zeros(5))
    np.save(tmp_path / "y.npy", np.zeros(5))
    with pytest.raises(UsageError, match="holds labels 'y' and --labels names others"):
        data(tmp_path / "d.npz", labels=str(tmp_path / "y.npy"))


@pytest.mark.parametrize(
    ("arrays", "specs", "message"),
    [
        ({"x": varied((4, 8, 8, 1))}, [IMAGE, ROWS], "has no array named 'image'"),
        ({"image": varied((4, 8, 8))}, [IMAGE], "does not fit input 'image'"),
        ({"image": varied((4, 8, 8, 1)), "rows": varied((3, 8, 8))}, [IMAGE, ROWS], "different"),
        ({"image": varied((0, 8, 8, 1))}, [IMAGE], "holds no samples"),
        ({"image": np.array([["a"] * 8] * 8)[None, ..., None]}, [IMAGE], "not numeric"),
    ],
)
def test_npz_mismatches_are_usage_errors(
    tmp_path: Path, arrays: dict, specs: list[InputSpec], message: str
) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, **arrays)
    with pytest.raises(UsageError, match=message):
        data(path, specs)


def test_npy_for_a_multi_input_model_asks_for_npz(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, varied((4, 8, 8, 1)))
    with pytest.raises(UsageError, match=r"2 inputs \(image, rows\); pass an .npz"):
        data(path, [IMAGE, ROWS])


def test_missing_data(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file or directory"):
        data(tmp_path / "x.npy")


@pytest.mark.parametrize("content", [b"not numpy", b"id,label\n1,2\n", b"\x00" * 64])
def test_data_of_the_wrong_kind_names_the_accepted_formats(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(UsageError) as raised:
        data(path)
    message = str(raised.value)
    assert "is not a .npy file (one input), an .npz file" in message
    assert "folder of images" in message
    assert "pickle" not in message.lower()


def test_pickled_arrays_are_refused_without_advice_to_unpickle(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError) as raised:
        data(path)
    message = str(raised.value)
    assert "holds Python objects, which bncheck never unpickles" in message
    assert "allow_pickle" not in message
    # a raw pickle is no array file at all
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UsageError, match="is not a .npy file"):
        data(raw)


def test_npy_is_memory_mapped(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, varied((100, 8, 8, 1), dtype="float32"))
    assert isinstance(data(path).inputs[0], np.memmap)


def test_batches_are_shuffled_seeded_and_hold_every_sample(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    np.savez(path, x=np.arange(10).reshape(10, 1, 1, 1) * varied((1, 8, 8, 1)), y=np.arange(10))
    opened = data(path)
    batches = list(opened.batches(4, seed=0, samples=None))
    assert [batch.size for batch in batches] == [4, 4, 2]  # the short last batch, as fit runs it
    seen = np.concatenate([batch.labels for batch in batches])
    assert sorted(seen.tolist()) == list(range(10))
    again = np.concatenate([b.labels for b in opened.batches(4, seed=0, samples=None)])
    assert np.array_equal(seen, again)
    other = np.concatenate([b.labels for b in opened.batches(4, seed=1, samples=None)])
    assert not np.array_equal(seen, other)
    whole = list(opened.batches(4, seed=0, samples=None, whole=True))
    assert [batch.size for batch in whole] == [4, 4]
    assert [batch.size for batch in opened.batches(4, seed=0, samples=5)] == [4, 1]
    assert [batch.size for batch in opened.batches(16, seed=0, samples=None)] == [10]


def test_synthetic_batch_follows_the_input_spec() -> None:
    image, rows = synthetic_batch([IMAGE, ROWS], 6, seed=0, shapes={}).inputs
    assert image.shape == (6, 8, 8, 1) and rows.shape == (6, 8, 8)
    assert image.dtype == np.float32
    assert np.array_equal(image, synthetic_batch([IMAGE], 6, seed=0, shapes={}).inputs[0])


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
    with pytest.raises(UsageError) as raised:
        resolve_shape(open_image, {None: (16, 16, 1)}, single=True)
    assert str(raised.value).endswith("it takes 3 dimensions after the batch (D,D,3)")
    with pytest.raises(UsageError, match=r"3 dimensions after the batch \(D,D,3\)"):
        resolve_shape(open_image, {None: (16, 16)}, single=True)


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"imgae": (8, 8, 1)}, "--input-shape imgae=8,8,1: the model has no input named 'imgae' "
         "(its inputs: 'image', 'rows')"),
        ({None: (8, 8, 1)}, "--input-shape 8,8,1 names no input, and the model has 2 "
         "('image', 'rows'): give NAME=D1,D2,... for each input it is for"),
    ],
)  # fmt: skip
def test_an_input_shape_that_fits_no_input_is_a_usage_error(
    shapes: dict[str | None, tuple[int, ...]], message: str
) -> None:
    """Left unused, it would pass unseen: the declared shapes are used instead."""
    with pytest.raises(UsageError) as raised:
        synthetic_batch([IMAGE, ROWS], 4, seed=0, shapes=shapes)
    assert str(raised.value) == message
    named = synthetic_batch([IMAGE, ROWS], 4, seed=0, shapes={"image": (8, 8, 1)})
    assert named.inputs[0].shape == (4, 8, 8, 1)


@pytest.mark.parametrize(
    ("text", "parsed"), [("8,8,1", (None, (8, 8, 1))), ("image=32,32,3", ("image", (32, 32, 3)))]
)
def test_parse_input_shape(text: str, parsed: tuple) -> None:
    assert parse_input_shape(text) == parsed


@pytest.mark.parametrize("text", ["8,x", "image=", "0,8", ""])
def test_bad_input_shapes(text: str) -> None:
    with pytest.raises(UsageError, match="--input-shape"):
        parse_input_shape(text)
