"""One registry of formats: detection, folder scans, reading, the probe's runtime, recalibrate's
writers, the pre-commit pattern and the docs table all follow its entries, and a new format is
one entry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from bncheck import formats, isolation
from bncheck.errors import ModelReadError
from bncheck.model import BNLayer, ModelDescription
from bncheck.probe.options import ProbeOptions
from bncheck.probe.runner import run_probe
from bncheck.readers import detect, read_model
from tests.conftest import FIXTURES, REPO, CliResult

Run = Callable[..., CliResult]
TOY_MAGIC = b"TOYMODEL"


def read_toy(path: str) -> ModelDescription:
    """A toy format's reader: the file's one BatchNorm layer, its statistics after the magic."""
    values = np.frombuffer(Path(path).read_bytes()[len(TOY_MAGIC) :], "<f4")
    if values.size != 4:
        raise ModelReadError("a toy model holds a mean and a variance of two channels")
    layer = BNLayer(
        path="toy/bn",
        name="bn",
        class_name="BatchNormalization",
        moving_mean=values[:2].astype("float64"),
        moving_variance=values[2:].astype("float64"),
    )
    return ModelDescription(path, "toy", (layer,))


def _is_toy(candidate: formats.Candidate) -> bool:
    """a file starting with `TOYMODEL`"""
    return candidate.head.startswith(TOY_MAGIC)


TOY = formats.Format(
    name="toy",
    called="a toy model",
    framework="Toy",
    recognise=_is_toy,
    reader=f"{__name__}:read_toy",
    suffixes=(".toy",),
    found_in_folders=_is_toy,
    not_run="a toy model has no runtime",
    not_written="toys are not written",
)


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> Iterator[formats.Format]:
    # Reading workers are forks of this process: the toy format exists in those forked after
    # it is registered, and must not outlive this test in any.
    isolation.close_idle_workers()
    monkeypatch.setitem(formats.FORMATS, TOY.name, TOY)
    yield TOY
    isolation.close_idle_workers()


def toy_file(path: Path, mean: tuple[float, float] = (0.5, -0.5)) -> Path:
    path.write_bytes(TOY_MAGIC + np.array([*mean, 1.0, 2.0], "<f4").tobytes())
    return path


def run_with_toy(*args: object) -> CliResult:
    """``bncheck ARGS`` in a fresh process that registers the toy format first: bncheck reads
    files in worker processes, which must know the format as the command does."""
    register = (
        "import sys; from tests.test_formats_registry import TOY; from bncheck import formats; "
        "formats.FORMATS[TOY.name] = TOY; from bncheck.cli import main; main(sys.argv[1:])"
    )
    done = subprocess.run(
        [sys.executable, "-c", register, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=False,
    )
    return CliResult(done.returncode, done.stdout, done.stderr)


def test_a_new_format_is_one_entry(toy_registered: formats.Format, tmp_path: Path) -> None:
    (tmp_path / "models").mkdir()
    model = toy_file(tmp_path / "models/net.toy")
    renamed = toy_file(tmp_path / "models/net.bin")
    broken = tmp_path / "models/broken.toy"
    broken.write_bytes(TOY_MAGIC + b"8 bytes!")
    notes = tmp_path / "notes.txt"
    notes.write_text("no model")

    assert detect.sniff(str(model)) is toy_registered
    assert detect.sniff(str(renamed)) is toy_registered
    assert read_model(str(model)).layers[0].moving_mean.tolist() == [0.5, -0.5]
    # Folder scans find it by its suffix (the broken one too, to report it) and by content.
    assert detect.find_models(str(tmp_path / "models")) == [str(broken), str(renamed), str(model)]
    assert re.search(formats.precommit_pattern(), "models/NET.TOY")
    with pytest.raises(ModelReadError, match=r"\(expected .* or a toy model\)"):
        detect.sniff(str(notes))

    result = run_with_toy("inspect", tmp_path / "models", "--format", "json")
    assert result.code == 3  # the broken one, read by the toy reader
    assert result.err.startswith(f"bncheck: error: {broken}: a toy model holds a mean")
    found = {m["path"]: m for m in result.json()["models"]}
    assert found[str(model)]["format"] == "toy" and found[str(model)]["error"] is None

    probed = run_probe(str(model), ProbeOptions(), lambda _: None)
    assert probed.skipped == "a toy model has no runtime"
    recalibrated = run_with_toy("recalibrate", model, "--data", "x.npy", "-o", tmp_path / "o.toy")
    assert recalibrated.code == 2
    assert recalibrated.err == (
        f"bncheck: error: {model}: recalibrate reads and writes {formats.writable_models()}, "
        "not a toy model; toys are not written\n"
    )


def test_without_its_entry_the_toy_is_no_model(tmp_path: Path) -> None:
    model = toy_file(tmp_path / "net.bin")
    with pytest.raises(ModelReadError, match="not a model file bncheck can read"):
        detect.sniff(str(model))
    assert detect.find_models(str(tmp_path)) == []


@pytest.mark.parametrize(
    ("fixture", "name"),
    [
        ("keras3/nested.keras", "keras"),
        ("keras2/nested.h5", "hdf5"),
        ("weights/healthy_cnn.weights.h5", "hdf5"),
        ("eras/keras3_sharded.weights.json", "keras-shards"),
        ("probe/tf_keras_savedmodel", "savedmodel"),
        ("checkpoints/tf1_saver_all", "checkpoint"),
        ("pytorch/healthy.pt", "pytorch"),
        ("pytorch/healthy_model.pt", "pytorch"),
        ("pytorch/healthy_torchscript.pt", "torchscript"),
        ("pytorch/healthy.safetensors", "safetensors"),
        ("pytorch/healthy.onnx", "onnx"),
    ],
)
def test_every_format_is_recognised(fixture: str, name: str) -> None:
    assert detect.sniff(str(FIXTURES / fixture)).name == name


def test_every_entry_names_a_reader_and_a_runtime_that_exist() -> None:
    for entry in formats.FORMATS.values():
        assert callable(formats.load(entry.reader)), entry.name
        assert entry.runtime is None or entry.runtime in formats.RUNTIMES, entry.name
        assert (entry.runtime is None) == bool(entry.not_run), entry.name
        assert (entry.writer is None) == bool(entry.not_written), entry.name
        assert entry.recognise.__doc__, f"{entry.name}: the docs table says how it is recognised"
        assert all(suffix == suffix.lower() for suffix in entry.suffixes), entry.name
    for runtime in formats.RUNTIMES.values():
        assert callable(formats.load(runtime.probe)), runtime.name


IMPORTED = """
import sys
import bncheck.formats
print(sorted(m for m in sys.modules if m.startswith("bncheck.")))
print(sorted(m for m in sys.modules if m.split(".")[0] in
      ("tensorflow", "keras", "torch", "onnx", "onnxruntime", "h5py", "numpy", "google")))
"""


def test_the_registry_imports_no_reader_and_no_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTED], capture_output=True, text=True, check=True, cwd=REPO
    )
    ours, heavy = done.stdout.splitlines()
    assert [m for m in eval(ours) if m.startswith(("bncheck.readers", "bncheck.probe"))] == []
    assert eval(heavy) == []


def test_the_docs_formats_table_is_generated_from_the_registry() -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "docs/gen_formats.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
