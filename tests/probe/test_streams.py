"""Streamed data: TFRecord files, dataset functions, tf.data datasets and Python iterables,
matched to the inputs and re-batched; every problem a one-line usage error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from bncheck.errors import UsageError
from bncheck.probe.data import Batch, InputSpec, data_source, open_data
from bncheck.probe.data.streams import (
    StreamData,
    TFRecordData,
    parse_dataset_fn,
    parse_feature,
    parse_records,
    served,
)
from bncheck.probe.options import DatasetFunction, FeatureSpec, RecordOptions

IMAGE = InputSpec("image", (None, 4, 4, 1), "float32")
ROWS = InputSpec("rows", (None, 3), "float32")


def samples(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose every pixel is the sample's number, and labels twice that."""
    x = np.arange(count, dtype="float32").reshape(count, 1, 1, 1) * np.ones((1, 4, 4, 1), "f")
    return x, np.arange(count) * 2


def numbers(batches: list[Batch]) -> list[list[int]]:
    return [batch.inputs[0][:, 0, 0, 0].astype(int).tolist() for batch in batches]


def write_records(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(x, y, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "pixels": tf.train.Feature(
                            float_list=tf.train.FloatList(value=image.ravel())
                        ),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                    }
                )
            )
            writer.write(example.SerializeToString())


PIXELS = FeatureSpec("pixels", "float32", (4, 4, 1))
LABEL = FeatureSpec("label", "int64", ())


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("image:float32:224,224,3", FeatureSpec("image", "float32", (224, 224, 3))),
        ("class:int64", FeatureSpec("class", "int64", ())),
    ],
)
def test_parse_feature(text: str, parsed: FeatureSpec) -> None:
    assert parse_feature(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image", "expected NAME:DTYPE"),
        ("image:float64:3", "DTYPE float32 or int64"),
        (":float32:3", "expected NAME:DTYPE"),
        ("image:float32:3,x", "whole numbers"),
        ("image:float32:0,3", "positive"),
    ],
)
def test_bad_features(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_feature(text)


def test_record_options_need_each_other() -> None:
    assert parse_records(None, (), None) is None
    with pytest.raises(UsageError, match="describe --tfrecord files: pass --tfrecord"):
        parse_records(None, ("image:float32:3",), None)
    with pytest.raises(UsageError, match="declare the features to read"):
        parse_records("data-*.tfrecord", (), None)
    with pytest.raises(UsageError, match="names a feature twice"):
        parse_records("d", ("a:float32:1", "a:int64:1"), None)
    parsed = parse_records("d-*", ("a:float32:1",), "y:int64")
    assert parsed == RecordOptions("d-*", (FeatureSpec("a", "float32", (1,)),), LABEL_Y)


LABEL_Y = FeatureSpec("y", "int64", ())


def test_parse_dataset_fn() -> None:
    assert parse_dataset_fn("my/data.py:make") == DatasetFunction("my/data.py", "make")
    for text in ("data.py", "data.py:", ":make", "data.py:not-a-name"):
        with pytest.raises(UsageError, match="expected FILE.py:FUNCTION"):
            parse_dataset_fn(text)


def test_one_source_at_a_time() -> None:
    records = RecordOptions("d-*", (PIXELS,))
    with pytest.raises(UsageError, match="--data and --tfrecord both name data"):
        data_source("x.npy", records=records)
    with pytest.raises(UsageError, match="--labels goes with --data array files"):
        data_source(None, labels="y.npy", records=records)
    with pytest.raises(UsageError, match="--labels needs --data"):
        data_source(None, labels="y.npy")
    with pytest.raises(UsageError, match="apply to image folders only"):
        data_source(None, image_size=(8, 8), dataset_fn=DatasetFunction("f.py", "make"))
    assert data_source(None, records=records) is records


@pytest.mark.parametrize("batched", [False, True])
def test_tf_datasets_are_rebatched_in_their_order(batched: bool) -> None:
    x, y = samples(10)
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if batched:
        dataset = dataset.batch(3)  # 3, 3, 3, 1: re-batched to 4, 4, 2
    data = StreamData(dataset, [IMAGE], "data")
    assert data.labelled
    assert data.available == (None if batched else 10)
    everything = list(data.batches(4, seed=0, samples=None, whole=False))
    assert numbers(everything) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    for batch in everything:
        assert batch.labels is not None
        assert np.array_equal(batch.inputs[0][:, 0, 0, 0] * 2, batch.labels)
    assert numbers(list(data.batches(4, seed=0, samples=None))) == numbers(everything)
    whole = [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert numbers(list(data.batches(4, seed=0, samples=None, whole=True))) == whole
    assert numbers(list(data.batches(4, seed=0, samples=6))) == [[0, 1, 2, 3], [4, 5]]
    assert numbers(list(data.batches(16, seed=0, samples=3))) == [[0, 1, 2]]


def test_python_iterables_of_batches_or_samples() -> None:
    x, y = samples(7)
    chunks = [(x[:2], y[:2]), (x[2:5], y[2:5]), (x[5:], y[5:])]
    batches = list(StreamData(chunks, [IMAGE], "data").batches(3, 0, None, whole=False))
    assert numbers(batches) == [[0, 1, 2], [3, 4, 5], [6]]
    assert np.array_equal(np.concatenate([b.labels for b in batches]), y)
    one_by_one = StreamData([{"image": image} for image in x], [IMAGE], "data")
    assert not one_by_one.labelled
    assert numbers(list(one_by_one.batches(3, 0, None))) == [[0, 1, 2], [3, 4, 5], [6]]


def test_inputs_by_name_or_position() -> None:
    x, _ = samples(4)
    rows = np.ones((4, 3), "float32")
    for element in ({"rows": rows, "image": x}, (x, rows)):
        [batch] = StreamData([(element,)], [IMAGE, ROWS], "data").batches(4, 0, None)
        assert batch.inputs[0].shape == (4, 4, 4, 1) and batch.inputs[1].shape == (4, 3)


def test_an_iterator_is_read_once() -> None:
    x, y = samples(8)
    data = StreamData(iter([(x, y)]), [IMAGE], "data (generator)")
    assert numbers(list(data.batches(4, 0, None))) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(UsageError, match=r"is an iterator, which can be read only once"):
        list(data.batches(4, 0, None))
    again = StreamData(iter([(x, y)]), [IMAGE], "data", again=lambda: iter([(x[:4], y[:4])]))
    list(again.batches(4, 0, None))
    assert numbers(list(again.batches(4, 0, None))) == [[0, 1, 2, 3]]


@pytest.mark.parametrize(
    ("data", "specs", "message"),
    [
        (3, [IMAGE], "is a int: give arrays"),
        ([], [IMAGE], "holds no samples"),
        ([np.ones((2, 4))], [IMAGE], "rank 2, which are neither batches nor samples"),
        ([np.ones((2, 4, 5, 1))], [IMAGE], r"shape \(2, 4, 5, 1\) does not fit input 'image'"),
        (
            [{"rows": np.ones((2, 3)), "mask": np.ones(2)}],
            [IMAGE],
            "has no input named 'image' \\(it holds rows, mask\\)",
        ),
        ([np.ones((2, 4, 4, 1))], [IMAGE, ROWS], "gives one input and the model has 2"),
        ([((np.ones((2, 3)),),)], [IMAGE, ROWS], "gives 1 inputs and the model has 2"),
    ],
)
def test_streams_that_do_not_fit(data: object, specs: list[InputSpec], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        list(StreamData(data, specs, "data").batches(2, 0, None))


def test_labels_on_some_elements_only() -> None:
    x, y = samples(4)
    with pytest.raises(UsageError, match="some elements have labels and some do not"):
        list(StreamData([(x[:2], y[:2]), x[2:]], [IMAGE], "data").batches(2, 0, None))


def test_tf_datasets_that_do_not_fit() -> None:
    ragged = tf.data.Dataset.from_tensor_slices(tf.ragged.constant([[1.0], [2.0, 3.0]]))
    with pytest.raises(UsageError, match="yields RaggedTensorSpec values"):
        StreamData(ragged, [ROWS], "data")
    words = tf.data.Dataset.from_tensor_slices(tf.constant([["a", "b", "c"]]))
    with pytest.raises(UsageError, match="the values for 'rows' are not numeric"):
        StreamData(words, [ROWS], "data")
    endless = tf.data.Dataset.from_tensor_slices(np.ones((2, 3), "float32")).repeat()
    data = StreamData(endless, [ROWS], "data")
    with pytest.raises(UsageError, match="repeats without end: say how many samples"):
        list(data.batches(2, 0, None))
    assert [batch.size for batch in data.batches(2, 0, samples=5)] == [2, 2, 1]


def test_served_keeps_whole_batches() -> None:
    def sized(*sizes: int) -> list[Batch]:
        return [Batch([np.zeros((size, 1))]) for size in sizes]

    assert [b.size for b in served(sized(4, 4, 2), 4, None, whole=True)] == [4, 4]
    assert [b.size for b in served(sized(4, 4, 2), 4, None, whole=False)] == [4, 4, 2]
    assert [b.size for b in served(sized(3), 4, None, whole=True)] == [3]
    assert [b.size for b in served(sized(4, 4), 4, 6, whole=False)] == [4, 2]


def test_tfrecords_read_every_record_once_shuffled_and_seeded(tmp_path: Path) -> None:
    x, y = samples(30)
    for part in range(3):
        write_records(
            tmp_path / f"d-{part}.tfrecord",
            x[part * 10 : part * 10 + 10],
            y[part * 10 : part * 10 + 10],
        )
    options = RecordOptions(str(tmp_path / "d-*.tfrecord"), (PIXELS,), LABEL)
    data = open_data(options, [IMAGE])
    assert isinstance(data, TFRecordData) and data.labelled
    first = numbers(list(data.batches(8, seed=0, samples=None, whole=False)))
    assert sorted(sum(first, [])) == list(range(30))
    assert [len(batch) for batch in first] == [8, 8, 8, 6]
    assert first == numbers(list(data.batches(8, seed=0, samples=None, whole=False)))
    assert first != numbers(list(data.batches(8, seed=1, samples=None, whole=False)))
    assert numbers(list(data.batches(8, seed=0, samples=None))) == first
    assert numbers(list(data.batches(8, seed=0, samples=None, whole=True)))[-1] == first[2]


def test_tfrecord_problems_are_one_line(tmp_path: Path) -> None:
    x, y = samples(4)
    write_records(tmp_path / "d.tfrecord", x, y)
    (tmp_path / "junk.tfrecord").write_bytes(b"not a record file at all" * 4)

    def opened(pattern: str, *features: FeatureSpec, specs: list[InputSpec]) -> TFRecordData:
        return TFRecordData(RecordOptions(str(tmp_path / pattern), features), specs)

    with pytest.raises(UsageError, match="no file matches"):
        opened("none-*.tfrecord", PIXELS, specs=[IMAGE])
    with pytest.raises(UsageError, match=r"--feature pixels: values of shape \(None, 2, 8, 1\)"):
        opened("d.tfrecord", FeatureSpec("pixels", "float32", (2, 8, 1)), specs=[IMAGE])
    with pytest.raises(UsageError, match="has 2 dimensions; input 'image'"):
        opened("d.tfrecord", FeatureSpec("pixels", "float32", (16, 1)), specs=[IMAGE])
    with pytest.raises(UsageError, match=r"no --feature for input 'image' .* \(declared: pixels\)"):
        opened("d.tfrecord", PIXELS, specs=[IMAGE, ROWS])
    with pytest.raises(UsageError, match="--feature extra feeds no input"):
        opened("d.tfrecord", FeatureSpec("image", "float32", (4, 4, 1)),
               FeatureSpec("extra", "float32", (1,)), specs=[IMAGE])  # fmt: skip
    missing = opened("d.tfrecord", FeatureSpec("image", "float32", (4, 4, 1)), specs=[IMAGE])
    with pytest.raises(UsageError) as raised:
        list(missing.batches(2, 0, None))
    assert "--tfrecord" in str(raised.value) and "image" in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(UsageError) as raised:
        list(opened("junk.tfrecord", PIXELS, specs=[IMAGE]).batches(2, 0, None))
    assert str(raised.value).startswith(f"--tfrecord {tmp_path / 'junk.tfrecord'}: ")
    assert "\n" not in str(raised.value)


def test_the_users_files_import_their_neighbours_and_get_no_bytecode_beside_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A --dataset-fn or --custom-objects file imports the modules beside it, as ``python
    FILE.py`` lets it; their folder is the user's: Python would write __pycache__ beside the
    file and each module it imports, even at call time."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    monkeypatch.setattr(sys, "path", list(sys.path))
    (tmp_path / "helpers_for_bncheck_test.py").write_text("SIZE = 2\n")
    (tmp_path / "data.py").write_text(
        "import numpy as np\n"
        "import helpers_for_bncheck_test\n"
        "def make():\n"
        "    from helpers_for_bncheck_test import SIZE\n"
        "    x = np.zeros((SIZE, 4, 4, 1), 'float32')\n"
        "    return iter([(x, np.arange(SIZE))])\n"
    )
    data = open_data(DatasetFunction(str(tmp_path / "data.py"), "make"), [IMAGE])
    assert len(list(data.batches(2, 0, None))) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "data.py",
        "helpers_for_bncheck_test.py",
    ]


def test_x_and_y_arrays_side_by_side_are_a_mistake_said_in_one_line() -> None:
    """``return x, y`` (Keras's fit(x, y) habit) reads as two batches, the second of labels."""
    x, y = np.zeros((6, 4, 4, 1), "float32"), np.arange(6)
    with pytest.raises(UsageError) as raised:
        StreamData((x, y), [IMAGE], "--dataset-fn data.py:make")
    assert str(raised.value) == (
        "--dataset-fn data.py:make gives a tuple of arrays shaped (6, 4, 4, 1) and (6,), read as "
        "batches one after another: for (x, y) arrays give zip(x, y) or "
        "tf.data.Dataset.from_tensor_slices((x, y))"
    )
    zipped = StreamData(zip(x, y, strict=True), [IMAGE], "zipped")
    assert len(list(zipped.batches(3, 0, None))) == 2


def test_a_dataset_function_may_return_arrays_as_the_api_takes_them(tmp_path: Path) -> None:
    """``return x, y`` is samples and their labels, as ``bncheck.recalibrate(model, (x, y))``
    reads them; a dict by input name and a lone ``x`` too."""
    (tmp_path / "data.py").write_text(
        "import numpy as np\n"
        "x = np.arange(6, dtype='float32').reshape(6, 1, 1, 1) * np.ones((1, 4, 4, 1), 'f')\n"
        "def pair():\n"
        "    return x, np.arange(6)\n"
        "def named():\n"
        "    return {'image': x, 'y': np.arange(6)}\n"
        "def alone():\n"
        "    return x\n"
    )
    for name, labelled in (("pair", True), ("named", True), ("alone", False)):
        data = open_data(DatasetFunction(str(tmp_path / "data.py"), name), [IMAGE])
        assert data.labelled is labelled, name
        assert data.source == f"--dataset-fn {tmp_path / 'data.py'}:{name}"
        batches = list(data.batches(3, 0, None))
        assert [len(batch.inputs[0]) for batch in batches] == [3, 3], name
        seen = np.concatenate([batch.inputs[0][:, 0, 0, 0] for batch in batches])
        assert sorted(seen.tolist()) == [0, 1, 2, 3, 4, 5], name
        if labelled:
            labels = np.concatenate([batch.labels for batch in batches])
            assert labels.tolist() == seen.tolist(), name  # each sample keeps its label


def test_dataset_functions_run_the_users_file(tmp_path: Path) -> None:
    script = tmp_path / "data.py"
    script.write_text(
        "import numpy as np\n"
        "calls = []\n"
        "def make():\n"
        "    calls.append(1)\n"
        "    x = np.arange(6, dtype='float32').reshape(6, 1, 1, 1) * np.ones((1, 4, 4, 1), 'f')\n"
        "    return ((x[i : i + 2], np.arange(i, i + 2)) for i in range(0, 6, 2))\n"
        "def broken():\n"
        "    raise RuntimeError('no data today')\n"
    )
    data = open_data(DatasetFunction(str(script), "make"), [IMAGE])
    assert data.source == f"--dataset-fn {script}:make" and data.labelled
    # A generator is read once: the function is called again for the second pass.
    for _ in range(2):
        assert numbers(list(data.batches(3, 0, None))) == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(
        UsageError, match=r":broken failed \(RuntimeError: no data today; data.py line 8\)"
    ):
        open_data(DatasetFunction(str(script), "broken"), [IMAGE])
    with pytest.raises(UsageError, match="defines no function 'other'"):
        open_data(DatasetFunction(str(script), "other"), [IMAGE])
    with pytest.raises(UsageError, match="--dataset-fn missing.py: no such file"):
        open_data(DatasetFunction("missing.py", "make"), [IMAGE])
    (tmp_path / "bad.py").write_text("raise ImportError('needs a package')\n")
    with pytest.raises(
        UsageError, match=r"bad.py failed \(ImportError: needs a package; bad.py line 1\)"
    ):
        open_data(DatasetFunction(str(tmp_path / "bad.py"), "make"), [IMAGE])
