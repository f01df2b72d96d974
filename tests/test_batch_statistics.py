"""A PyTorch network whose BatchNorm keeps no running statistics (``track_running_stats=False``)
is recognised wherever the file shows it, pickled, scripted, traced or exported to ONNX, and
reported by BN022 in PyTorch's words, never as unreadable. The files are made at test time."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import CliResult

Run = Callable[..., CliResult]
FORMS = ("pickled.pt", "scripted.pt", "traced.pt", "exported.onnx")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch", reason="the test networks are made with the torch extra")
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4, track_running_stats=False),
        nn.ReLU(),
        nn.BatchNorm2d(4),  # after a ReLU, so that the ONNX export cannot fold it
    ).eval()
    out = tmp_path_factory.mktemp("batch_statistics")
    example = torch.randn(2, 3, 8, 8)
    torch.save(net, out / "pickled.pt")
    torch.save(net.state_dict(), out / "state_dict.pt")
    torch.jit.script(net).save(str(out / "scripted.pt"))
    with warnings.catch_warnings():
        # The tracer and the exporter warn that the layer normalises with batch statistics.
        warnings.simplefilter("ignore")
        torch.jit.trace(net, example).save(str(out / "traced.pt"))
        torch.onnx.export(net, (example,), str(out / "exported.onnx"), dynamo=False)
    return out


@pytest.mark.parametrize("form", FORMS)
def test_every_form_reports_inference_on_batch_statistics(
    run_cli: Run, saved: Path, form: str
) -> None:
    result = run_cli("inspect", saved / form, "--format", "json")
    assert result.code == 0, result.err
    [model] = result.json()["models"]
    assert model["error"] is None
    assert [layer["path"] for layer in model["layers"]] == ["3"]
    [finding] = [f for f in model["findings"] if f["rule"] == "BN022"]
    assert finding["layer"] == "1" and finding["severity"] == "warning"
    assert finding["details"]["channels"] == 4
    assert finding["message"].startswith("the layer keeps no running_mean and running_var")
    assert "moving_mean" not in finding["message"]
    table = run_cli("inspect", saved / form)
    assert ": 2 BatchNorm layers" in table.out
    assert "BN022 batch-statistics-at-inference  1: " in table.out
    assert run_cli("inspect", saved / form, "--fail-on", "warning").code == 1


def test_a_state_dict_cannot_show_it(run_cli: Run, saved: Path) -> None:
    # Without running statistics the layer leaves weight and bias only, like any affine layer.
    result = run_cli("inspect", saved / "state_dict.pt", "--format", "json")
    [model] = result.json()["models"]
    assert [layer["path"] for layer in model["layers"]] == ["3"]
    assert all(f["rule"] != "BN022" for f in model["findings"])


def test_statistics_computed_otherwise_stay_unreadable(
    run_cli: Run, saved: Path, tmp_path: Path
) -> None:
    import onnx

    model = onnx.load(str(saved / "exported.onnx"))
    node = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    # Feed the mean from an Add of stored tensors: computed, but not a batch mean.
    add = onnx.helper.make_node("Add", [node.input[1], node.input[2]], ["odd_mean"])
    model.graph.node.insert(0, add)
    node.input[3] = "odd_mean"
    path = tmp_path / "odd.onnx"
    onnx.save(model, str(path))
    result = run_cli("inspect", path)
    assert result.code == 3
    assert "is computed in the graph, not stored" in result.err
