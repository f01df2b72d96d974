"""No command modifies what it reads: every fixture file keeps its bytes and its modification time
through inspect (static, on folders, with the probe), checkpoint, recalibrate without --in-place
and plot, and nothing is added beside them."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable
from pathlib import Path

from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
PROBE = FIXTURES / "probe"
DATA = FIXTURES / "data/digits_0_1.npy"


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file below ``root``: its SHA-256 and its modification time in nanoseconds."""
    return {
        path.relative_to(root).as_posix(): (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
        )
        for path in sorted(root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_every_command_leaves_its_inputs_untouched(run_cli: Run, tmp_path: Path) -> None:
    before = snapshot(FIXTURES)
    runs: list[list[object]] = [
        ["inspect", FIXTURES],
        ["inspect", *sorted(PROBE.glob("*.keras")), "--data", DATA],
        ["inspect", PROBE / "stale_stats.keras", "--probe"],
        ["checkpoint", FIXTURES / "checkpoints/tf1_trainable_only"],
        [
            "checkpoint",
            FIXTURES / "checkpoints/keras3_object",
            "--model",
            FIXTURES / "checkpoints/keras3_cnn.keras",
        ],
        ["recalibrate", PROBE / "stale_stats.keras", "--data", DATA, "-o", tmp_path / "a.keras"],
        ["recalibrate", PROBE / "stale_stats.h5", "--data", DATA, "-o", tmp_path / "b.h5"],
        ["recalibrate", PROBE / "keras2_stale.h5", "--data", DATA, "-o", tmp_path / "c.h5"],
        ["plot", PROBE / "stale_stats.keras", "--data", DATA, "-o", tmp_path / "p.png"],
    ]
    for args in runs:
        result = run_cli(*args)
        assert result.code in (0, 1), (args, result.err)
    assert snapshot(FIXTURES) == before


def test_pytorch_safetensors_and_onnx_files_are_left_untouched(
    run_cli: Run, tmp_path: Path
) -> None:
    pytorch = FIXTURES / "pytorch"
    before = snapshot(pytorch)
    nchw = FIXTURES / "data/digits_nchw_heldout.npy"
    runs: list[tuple[list[object], set[int]]] = [
        (["inspect", pytorch], {1}),
        (["inspect", *sorted(pytorch.glob("*.onnx")), "--data", nchw], {1}),
        (["inspect", pytorch / "healthy.pt", "--probe", "--unsafe"], {0}),
        (
            [
                "checkpoint",
                FIXTURES / "checkpoints/keras3_object",
                "--model",
                pytorch / "healthy.pt",
            ],
            {0, 1},
        ),
        (
            ["recalibrate", pytorch / "healthy.onnx", "--data", nchw, "-o", tmp_path / "r.onnx"],
            {0, 1},
        ),
        (
            ["recalibrate", pytorch / "healthy.pt", "--runnable", pytorch / "healthy.onnx"]
            + ["--data", nchw, "-o", tmp_path / "r.pt"],
            {0, 1},
        ),
        (["plot", pytorch / "healthy.onnx", "--data", nchw, "-o", tmp_path / "p.png"], {0}),
    ]
    if importlib.util.find_spec("torch") is not None:
        torchscript = sorted(pytorch.glob("*_torchscript.pt"))
        runs.append(
            (["inspect", *torchscript, "--probe", "--unsafe", "--input-shape", "1,8,8"], {1})
        )
    for args, codes in runs:
        result = run_cli(*args)
        assert result.code in codes, (args, result.err)
    assert snapshot(pytorch) == before
