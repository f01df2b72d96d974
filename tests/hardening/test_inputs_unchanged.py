"""No command modifies what it reads: every fixture file keeps its bytes and its modification time
through inspect (static, on folders, with the probe), checkpoint, recalibrate without --in-place
and plot, and nothing is added beside them."""

from __future__ import annotations

import hashlib
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
