"""One rule decides whether re-estimated statistics are written and what ``inspect`` advises:
``bncheck recalibrate``, ``bncheck.torch.recalibrate`` and BN015 judge the same measured change
of the metric, with its 95% interval, the same way. Held to PyTorch networks trained on the
digits (``tests/torch_nets.py``) and their ONNX exports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CliResult

torch = pytest.importorskip("torch", reason="the networks are made with the torch extra")
pytest.importorskip("onnxruntime", reason="the ONNX runner needs the onnx extra")

import bncheck.torch  # noqa: E402
from tests import torch_nets  # noqa: E402

Run = Callable[..., CliResult]


def _batches(x: np.ndarray, y: np.ndarray) -> list[tuple[Any, Any]]:
    return [
        (torch.from_numpy(x[start : start + 32]), torch.from_numpy(y[start : start + 32]))
        for start in range(0, len(x), 32)
    ]


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = torch_nets.digits()
    out = tmp_path_factory.mktemp("one_rule")
    # Calibration: 288 held-out samples; validation: the other 309.
    cal_x, cal_y = data.test_x[:288], data.test_y[:288]
    val_x, val_y = data.test_x[288:], data.test_y[288:]
    np.savez(out / "calibration.npz", x=cal_x, y=cal_y)
    np.savez(out / "validation.npz", x=val_x, y=val_y)
    return {
        "data": data,
        "out": out,
        "calibration": _batches(cal_x, cal_y),
        "validation": _batches(val_x, val_y),
        "calibration_npz": out / "calibration.npz",
        "validation_npz": out / "validation.npz",
    }


def _cli_recalibrate(run_cli: Run, model: Path, digits: dict[str, Any]) -> CliResult:
    return run_cli(
        "recalibrate",
        model,
        "--data",
        digits["calibration_npz"],
        "--validate",
        digits["validation_npz"],
        "-o",
        model.with_name(model.stem + "-out.onnx"),
    )


def test_the_api_refuses_an_unchanged_metric_as_the_cli_does(
    run_cli: Run, digits: dict[str, Any]
) -> None:
    """Statistics already estimated from the calibration data (PyTorch's own ``update_bn``):
    re-estimating them changes no prediction, so the metric stays where it was, which is no
    evidence for writing them."""
    net = torch_nets.reestimated(
        torch_nets.trained("healthy", digits["data"]), digits["data"].test_x[:288]
    )
    model = torch_nets.export_onnx(net, digits["out"] / "fitted.onnx")
    cli = _cli_recalibrate(run_cli, model, digits)
    assert cli.code == 1, cli.out + cli.err
    assert "not written:" in cli.out and "would stay at" in cli.out
    saved = digits["out"] / "fitted.pt"
    api = bncheck.torch.recalibrate(
        net, digits["calibration"], validate=digits["validation"], save=saved
    )
    metric = api.verification.metric if api.verification else None
    assert metric is not None and metric.reestimated == metric.stored
    assert metric.change is not None and not metric.change.excludes_zero
    assert api.refusal is not None and "would stay at" in api.refusal
    assert "inconclusive on 309 samples" in api.refusal and "inconclusive on 309" in cli.out
    assert api.written_to is None and not saved.exists()
