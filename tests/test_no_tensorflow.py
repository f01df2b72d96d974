"""Reading a model never imports TensorFlow, Keras or matplotlib: importing them costs seconds.
Checkpoints and SavedModels need protobuf, and only they import it; only HDF5 files need h5py."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import FIXTURES

PROBE = """
import sys
from bncheck.cli import main
try:
    main([*sys.argv[1:], "--format", "json"])
except SystemExit as done:
    code = done.code
heavy = sorted(
    m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "matplotlib")
)
print("EXIT", code, file=sys.stderr)
print("HEAVY", heavy, file=sys.stderr)
print("PROTOBUF", "google.protobuf" in sys.modules, file=sys.stderr)
"""


def run(*args: str) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True)
    assert "EXIT 0" in done.stderr or "EXIT 1" in done.stderr, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr
    return done.stderr


@pytest.mark.parametrize(
    "fixture",
    [
        "keras3/nested.keras",
        "keras3/nested.h5",
        "keras2/nested.h5",
        "weights/nested.weights.h5",
        "weights/keras2_odd_names_weights.h5",
    ],
)
def test_static_inspect_does_not_import_tensorflow(fixture: str) -> None:
    assert "PROTOBUF False" in run("inspect", str(FIXTURES / fixture))


@pytest.mark.parametrize(
    "fixture",
    [
        "checkpoints/tf1_saver_all",
        "checkpoints/keras3_object",
        "checkpoints/tfkeras_weights/weights",
        "checkpoints/keras3_export",
        "checkpoints/tfkeras_savedmodel",
        "probe/stale_stats_export",
    ],
)
@pytest.mark.parametrize("command", ["inspect", "checkpoint"])
def test_checkpoints_and_savedmodels_do_not_import_tensorflow(command: str, fixture: str) -> None:
    run(command, str(FIXTURES / fixture))


def test_checkpoint_against_a_model_does_not_import_tensorflow() -> None:
    checkpoints = FIXTURES / "checkpoints"
    run(
        "checkpoint",
        str(checkpoints / "keras3_object"),
        "--model",
        str(checkpoints / "keras3_cnn.keras"),
    )


READ = """
import sys
from bncheck.readers import read_model
read_model(sys.argv[1])
print(sorted({m.split(".")[0] for m in sys.modules} & {"h5py", "torch", "onnx", "tensorflow"}))
"""


@pytest.mark.parametrize(
    "fixture",
    ["pytorch/healthy.pt", "pytorch/healthy.safetensors", "pytorch/healthy.onnx"],
)
def test_pytorch_and_onnx_files_are_read_without_h5py(fixture: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", READ, str(FIXTURES / fixture)], capture_output=True, text=True
    )
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
