"""`bncheck recalibrate` (and `inspect`) on TFRecord files and on the user's dataset function:
the same statistics as the arrays they hold, and every mistake one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult
from tests.probe.test_streams import write_records

Run = Callable[..., CliResult]
MODEL = FIXTURES / "probe/stale_stats.keras"
DIGITS = FIXTURES / "data/digits_0_1.npy"
LABELS = FIXTURES / "data/digits_0_1_labels.npy"
#: Every sample in one batch: the order a source gives cannot change the statistics.
ONE_BATCH = ("--batch-size", "360")
RECORDS = ("--feature", "pixels:float32:8,8,1", "--label", "label:int64")


def statistics(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        layer.path: (layer.moving_mean, layer.moving_variance)
        for layer in read_model(str(path)).layers
    }


def assert_same_statistics(ours: Path, theirs: Path) -> None:
    mine, other = statistics(ours), statistics(theirs)
    assert mine.keys() == other.keys()
    for path, (mean, variance) in mine.items():
        np.testing.assert_allclose(mean, other[path][0], rtol=1e-5, atol=1e-6, err_msg=path)
        np.testing.assert_allclose(variance, other[path][1], rtol=1e-5, err_msg=path)


@pytest.fixture(scope="module")
def arrays_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model recalibrated from the digits arrays in one batch."""
    from bncheck.cli import main

    out = tmp_path_factory.mktemp("arrays") / "arrays.keras"
    with pytest.raises(SystemExit) as done:
        main(["recalibrate", str(MODEL), "--data", str(DIGITS), "--labels", str(LABELS),
              "-o", str(out), *ONE_BATCH])  # fmt: skip
    assert done.value.code == 0
    return out


@pytest.fixture
def shards(tmp_path: Path) -> Path:
    """The digits and their labels in three TFRecord files."""
    x, y = np.load(DIGITS), np.load(LABELS)
    for part, rows in enumerate(np.array_split(np.arange(len(x)), 3)):
        write_records(tmp_path / f"digits-{part}.tfrecord", x[rows], y[rows])
    return tmp_path


def test_tfrecords_give_the_statistics_of_their_arrays(
    run_cli: Run, shards: Path, arrays_result: Path
) -> None:
    out = shards / "records.keras"
    pattern = shards / "digits-*.tfrecord"
    result = run_cli("recalibrate", MODEL, "--tfrecord", pattern, *RECORDS, "-o", out, *ONE_BATCH)
    assert result.code == 0, result.err + result.out
    assert result.out.splitlines()[0] == (
        f"re-estimated {MODEL}: 360 samples in 1 batch of {pattern}"
    )
    # --label gives the verification its accuracy, and the written model's probe its data.
    assert f"verified on {pattern} (calibration data, 360 samples): accuracy" in result.out
    assert f"probe: real data ({pattern}, labelled), 360 samples" in result.out
    assert_same_statistics(out, arrays_result)


def test_a_dataset_function_gives_the_statistics_of_its_arrays(
    run_cli: Run, tmp_path: Path, arrays_result: Path
) -> None:
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import numpy as np\n"
        "import tensorflow as tf\n"
        f"X, Y = np.load({str(DIGITS)!r}), np.load({str(LABELS)!r})\n"
        "def samples():\n"
        "    return tf.data.Dataset.from_tensor_slices(({'image': X}, Y))\n"
        "def batches():\n"
        "    return tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(360, seed=1).batch(50)\n"
    )
    for function in ("samples", "batches"):
        out = tmp_path / f"{function}.keras"
        result = run_cli(
            "recalibrate", MODEL, "--dataset-fn", f"{script}:{function}", "-o", out, *ONE_BATCH
        )
        assert result.code == 0, result.err + result.out
        assert f"360 samples in 1 batch of --dataset-fn {script}:{function}" in result.out
        assert_same_statistics(out, arrays_result)


def test_batched_datasets_are_rebatched(run_cli: Run, tmp_path: Path) -> None:
    """Batches of 7 become the --batch-size ones, in order: the same batches, the same
    statistics as the unbatched stream."""
    script = tmp_path / "pipeline.py"
    script.write_text(
        "import numpy as np\n"
        "import tensorflow as tf\n"
        f"X = np.load({str(DIGITS)!r})\n"
        "def samples():\n"
        "    return tf.data.Dataset.from_tensor_slices(X)\n"
        "def sevens():\n"
        "    return tf.data.Dataset.from_tensor_slices(X).batch(7)\n"
    )
    outs = []
    for function in ("samples", "sevens"):
        outs.append(tmp_path / f"{function}.keras")
        result = run_cli("recalibrate", MODEL, "--dataset-fn", f"{script}:{function}",
                         "-o", outs[-1], "--batch-size", "32", "--force")  # fmt: skip
        assert result.code == 0, result.err + result.out
        assert "360 samples in 12 batches" in result.out
    assert_same_statistics(outs[0], outs[1])


def test_inspect_runs_tfrecords(run_cli: Run, shards: Path) -> None:
    pattern = shards / "digits-*.tfrecord"
    result = run_cli("inspect", MODEL, "--tfrecord", pattern, *RECORDS, "--format", "json")
    assert result.code == 1, result.err  # the stale statistics are found on the records
    [model] = result.json()["models"]
    assert model["probe"]["data"]["source"] == str(pattern)
    assert model["probe"]["data"]["samples"] == 360
    assert "BN014" in {finding["rule"] for finding in model["findings"]}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tfrecord", "{tmp}/none-*.tfrecord", *RECORDS], "no file matches"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord"], "declare the features to read"),
        (["--data", str(DIGITS), "--feature", "pixels:float32:8,8,1"],
         "--feature and --label describe --tfrecord files"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord", "--feature", "pixels:float64:8,8,1"],
         "DTYPE float32 or int64"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord", "--feature", "pixels:float32:8,8,3"],
         "--feature pixels: values of shape (None, 8, 8, 3) do not fit input 'image'"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord", "--feature", "image:float32:8,8,1"],
         "Feature: image (data type: float) is required but could not be found"),
        (["--tfrecord", "{tmp}/junk.tfrecord", *RECORDS],
         "corrupted record at 0"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord", *RECORDS, "--labels", str(LABELS)],
         "--labels goes with --data array files: --tfrecord data carries its labels"),
        (["--tfrecord", "{tmp}/digits-*.tfrecord", *RECORDS, "--data", str(DIGITS)],
         "--data and --tfrecord both name data: give one"),
        (["--dataset-fn", "{tmp}/missing.py:make"], "no such file"),
        (["--dataset-fn", "{tmp}/pipeline.py:other"], "defines no function 'other'"),
        (["--dataset-fn", "{tmp}/pipeline.py:broken"],
         "pipeline.py:broken failed (OSError: no such bucket; pipeline.py line 3)"),
        (["--dataset-fn", "{tmp}/pipeline.py:text"], "the values for 'image' are not numeric"),
        (["--dataset-fn", "pipeline.py"], "expected FILE.py:FUNCTION"),
        ([], "recalibrate needs data: --data, --tfrecord or --dataset-fn"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line(run_cli: Run, shards: Path, args: list[str], message: str) -> None:
    (shards / "junk.tfrecord").write_bytes(b"\x00" * 64)
    (shards / "pipeline.py").write_text(
        "import tensorflow as tf\n"
        "def broken():\n"
        "    raise OSError('no such bucket')\n"
        "def text():\n"
        "    return tf.data.Dataset.from_tensor_slices(tf.fill([2, 8, 8, 1], 'a'))\n"
    )
    before = sorted(shards.iterdir())
    filled = [arg.replace("{tmp}", str(shards)) for arg in args]
    result = run_cli("recalibrate", MODEL, *filled, "-o", shards / "out.keras")
    assert result.code == 2, result.err + result.out
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: ")
    assert message in line
    assert sorted(shards.iterdir()) == before
