"""An ONNX export without a dynamic batch dimension (``torch.onnx.export`` without
``dynamic_axes``) takes batches of one size only: the probe and recalibrate run whole batches of
that size and say so, or refuse in one line; never onnxruntime's error about dimensions."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CliResult

torch = pytest.importorskip("torch", reason="the networks are made with the torch extra")
pytest.importorskip("onnxruntime", reason="the ONNX probe needs the onnx extra")

from tests import torch_nets  # noqa: E402

Run = Callable[..., CliResult]


def _export_fixed(net: Any, path: Path, batch: int) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            net.eval(),
            (torch.zeros(batch, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            do_constant_folding=False,
        )
    return path


@pytest.fixture(scope="module")
def stale(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    data = torch_nets.digits()
    out = tmp_path_factory.mktemp("fixed_batch")
    net = torch_nets.trained("stale", data)
    # 590 held-out samples: 18 whole batches of 32 and 14 left over.
    np.savez(out / "heldout.npz", x=data.test_x[:590], y=data.test_y[:590])
    np.savez(out / "few.npz", x=data.test_x[:40], y=data.test_y[:40])
    np.savez(out / "train.npz", x=data.train_x, y=data.train_y)
    return {
        "b32": _export_fixed(net, out / "b32.onnx", 32),
        "b1": _export_fixed(net, out / "b1.onnx", 1),
        "dynamic": torch_nets.export_onnx(net, out / "dynamic.onnx"),
        "heldout": out / "heldout.npz",
        "few": out / "few.npz",
        "train": out / "train.npz",
        "out": out,
    }


def _probe(run_cli: Run, model: Path, data: Path, *more: object) -> tuple[dict[str, Any], int]:
    result = run_cli("inspect", model, "--data", data, "--format", "json", *more)
    assert result.err == "", result.err
    found = result.json()["models"][0]
    assert found["error"] is None, found["error"]
    return found, result.code


def test_the_probe_runs_whole_batches_of_the_fixed_size(
    run_cli: Run, stale: dict[str, Path]
) -> None:
    fixed, code = _probe(run_cli, stale["b32"], stale["heldout"], "--batch-size", "16")
    assert code == 1  # the stale network's BN014 and BN015 errors
    data = fixed["probe"]["data"]
    assert (data["batch_size"], data["batches"], data["samples"]) == (32, 18, 576)
    assert any(
        "fixed batch dimension of 32: it ran whole batches of 32 instead of --batch-size 16" in note
        for note in fixed["probe"]["notes"]
    ), fixed["probe"]["notes"]
    # The same samples through the dynamic export: the same accuracy with the stored
    # statistics, and the same advice.
    dynamic, _ = _probe(
        run_cli, stale["dynamic"], stale["heldout"], "--batch-size", "32", "--samples", "576"
    )
    ours, theirs = fixed["probe"]["outputs"][0], dynamic["probe"]["outputs"][0]
    assert ours["metric"]["stored"] == theirs["metric"]["stored"] < 0.5
    assert ours["metric"]["reestimated"] == pytest.approx(theirs["metric"]["reestimated"])
    rules = {(f["rule"], f["severity"]) for f in fixed["findings"]}
    assert rules == {(f["rule"], f["severity"]) for f in dynamic["findings"]}
    assert ("BN015", "error") in rules


def test_recalibrate_runs_whole_batches_of_the_fixed_size(
    run_cli: Run, stale: dict[str, Path]
) -> None:
    out = stale["out"] / "repaired.onnx"
    result = run_cli(
        "recalibrate",
        stale["b32"],
        "--data",
        stale["train"],
        "--validate",
        stale["heldout"],
        "--batch-size",
        "16",
        "-o",
        out,
    )
    assert result.code == 0, result.out + result.err
    assert "1184 samples in 37 batches" in result.out  # 1,200 in whole batches of 32
    assert "held-out data, 576 samples" in result.out
    repaired, code = _probe(run_cli, out, stale["heldout"])
    assert code == 0
    assert repaired["probe"]["outputs"][0]["metric"]["stored"] > 0.75


def test_a_fixed_batch_of_one_is_refused_in_one_line(run_cli: Run, stale: dict[str, Path]) -> None:
    result = run_cli("inspect", stale["b1"], "--data", stale["heldout"], "--batch-size", "16")
    assert result.code == 3
    assert result.err.count("\n") == 1 and "Traceback" not in result.err
    assert result.err.startswith(f"bncheck: error: {stale['b1']}: probe: its inputs have a fixed ")
    assert "batch dimension of 1" in result.err and "dynamic_axes" in result.err


def test_too_few_samples_for_the_fixed_batch_are_one_line(
    run_cli: Run, stale: dict[str, Path]
) -> None:
    result = run_cli("inspect", stale["b32"], "--data", stale["few"])
    assert result.code == 3
    assert result.err.count("\n") == 1 and "INVALID_ARGUMENT" not in result.err
    assert "takes batches of exactly 32 samples" in result.err, result.err
    assert "give at least 64 samples" in result.err
