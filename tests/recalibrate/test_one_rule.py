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
    np.savez(out / "heldout.npz", x=data.test_x, y=data.test_y)
    return {
        "data": data,
        "healthy": torch_nets.trained("healthy", data),
        "heldout_npz": out / "heldout.npz",
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
    net = torch_nets.reestimated(digits["healthy"], digits["data"].test_x[:288])
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
    nothing = "not one of the 309 samples changes: nothing to gain"
    assert nothing in api.refusal and nothing in cli.out
    assert api.written_to is None and not saved.exists()


def _slightly_stale(digits: dict[str, Any], shift: float) -> Any:
    """The healthy network with statistics fitted to the held-out digits, then the second
    layer's running means moved by ``shift`` standard deviations (each channel up or down):
    statistics a little off, which cost it a few points."""
    data = digits["data"]
    net = torch_nets.reestimated(digits["healthy"], data.test_x)
    layer: Any = net.features[4]
    signs = np.random.default_rng(0).choice([-1.0, 1.0], layer.num_features)
    with torch.no_grad():
        layer.running_mean.add_(shift * layer.running_var.sqrt() * torch.tensor(signs).float())
    return net


def test_inspect_advises_the_small_significant_gain_recalibrate_writes(
    run_cli: Run, digits: dict[str, Any]
) -> None:
    """A gain of a few points whose interval excludes no change: BN015 advises recalibrating
    (never "too small"), and recalibrate on the same data writes the same change."""
    net = _slightly_stale(digits, 0.14)
    data = digits["data"]
    stored = torch_nets.accuracy(net, data.test_x, data.test_y)
    refitted = torch_nets.accuracy(
        torch_nets.reestimated(net, data.test_x), data.test_x, data.test_y
    )
    assert 0.01 < refitted - stored < 0.05  # below BN015's max_metric_gain
    model = torch_nets.export_onnx(net, digits["out"] / "slightly-stale.onnx")
    inspected = run_cli("inspect", model, "--data", digits["heldout_npz"], "--format", "json")
    [bn015] = [f for f in inspected.json()["models"][0]["findings"] if f["rule"] == "BN015"]
    low, high = bn015["details"]["change_interval"]
    assert 0 < low < high < 0.05, bn015
    assert bn015["details"]["advice"] == "recalibrate"
    assert bn015["severity"] == "warning" and "bncheck recalibrate writes them" in bn015["message"]
    out = digits["out"] / "slightly-stale-out.onnx"
    written = run_cli("recalibrate", model, "--data", digits["heldout_npz"], "-o", out)
    assert f"wrote {out}" in written.out, written.out + written.err
    assert written.code == 0


def test_a_significant_loss_beyond_max_metric_gain_fails_the_gate(
    run_cli: Run, digits: dict[str, Any]
) -> None:
    """Statistics that cost the network more than BN015's max_metric_gain (5 points), shown by
    the interval, are an error, as BN014's severe staleness is: the gate fails."""
    net = _slightly_stale(digits, 0.25)
    data = digits["data"]
    stored = torch_nets.accuracy(net, data.test_x, data.test_y)
    refitted = torch_nets.accuracy(
        torch_nets.reestimated(net, data.test_x), data.test_x, data.test_y
    )
    assert 0.05 < refitted - stored < 0.1  # below the former severe_metric_gain
    model = torch_nets.export_onnx(net, digits["out"] / "stale.onnx")
    inspected = run_cli("inspect", model, "--data", digits["heldout_npz"], "--format", "json")
    found = inspected.json()["models"][0]["findings"]
    [bn015] = [f for f in found if f["rule"] == "BN015"]
    low, _ = bn015["details"]["change_interval"]
    assert low > 0 and bn015["details"]["gain"] > 0.05, bn015
    assert bn015["severity"] == "error"
    assert inspected.code == 1
