"""The ONNX Runtime and TorchScript runners measure what PyTorch measures: every batch of the
data, the metric from the labels, and the effect of re-estimating the statistics, held to
PyTorch's own ``update_bn`` on networks trained the ways users train them (``torch_nets``)."""

from __future__ import annotations

import re
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
KINDS = ("healthy", "stale", "eval_trained")


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data = torch_nets.digits()
    out = tmp_path_factory.mktemp("torch_runtimes")
    # 18 whole batches of 32, so every sample is measured whatever the batching.
    data = torch_nets.Digits(data.train_x, data.train_y, data.test_x[:576], data.test_y[:576])
    np.savez(out / "heldout.npz", x=data.test_x, y=data.test_y)
    found: dict[str, Any] = {"data": data, "heldout": out / "heldout.npz"}
    for kind in KINDS:
        net = torch_nets.trained(kind, data)
        found[kind] = {
            "net": net,
            "stored": torch_nets.accuracy(net, data.test_x, data.test_y),
            "reestimated": torch_nets.accuracy(
                torch_nets.reestimated(net, data.test_x), data.test_x, data.test_y
            ),
            "onnx": torch_nets.export_onnx(net, out / f"{kind}.onnx"),
            "torchscript": torch_nets.export_torchscript(net, out / f"{kind}.pt"),
            "state_dict": out / f"{kind}.pth",
        }
        torch.save(net.state_dict(), out / f"{kind}.pth")
    # Recalibration estimates from one half of the held-out data and verifies on the other.
    np.savez(out / "calibration.npz", x=data.test_x[:288], y=data.test_y[:288])
    np.savez(out / "validation.npz", x=data.test_x[288:], y=data.test_y[288:])
    found["calibration"], found["validation"] = out / "calibration.npz", out / "validation.npz"
    found["out"] = out
    return found


def probe(run_cli: Run, path: Path, data: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    result = run_cli("inspect", path, "--data", data, "--unsafe", "--format", "json")
    model = result.json()["models"][0]
    assert model["error"] is None, model["error"]
    findings: dict[str, Any] = {}
    for finding in model["findings"]:  # each rule's most severe finding
        if finding["rule"] not in findings or finding["severity"] == "error":
            findings[finding["rule"]] = finding
    return model["probe"], findings, result.code


@pytest.mark.parametrize("form", ["onnx", "torchscript"])
def test_the_truth_of_each_network(run_cli: Run, nets: dict[str, Any], form: str) -> None:
    """Measured by bncheck as PyTorch measures it: the stored-statistics accuracy exactly (the
    same samples, the runtime's own inference), the re-estimated one within the noise of
    cross-fitting on held-out data."""
    truth = {kind: nets[kind] for kind in KINDS}
    assert truth["stale"]["stored"] < 0.5 < truth["stale"]["reestimated"]
    assert truth["eval_trained"]["reestimated"] < truth["eval_trained"]["stored"] - 0.2
    for kind in KINDS:
        probed, findings, code = probe(run_cli, truth[kind][form], nets["heldout"])
        assert (probed["data"]["samples"], probed["data"]["batches"]) == (576, 18)
        metric = probed["outputs"][0]["metric"]
        assert metric["name"] == "accuracy"
        assert metric["stored"] == pytest.approx(truth[kind]["stored"], abs=1e-9)
        assert metric["reestimated"] == pytest.approx(truth[kind]["reestimated"], abs=0.04)
        if kind == "healthy":
            assert not {"BN014", "BN015"} & {
                r for r, f in findings.items() if f["severity"] != "info"
            }
        elif kind == "stale":
            assert findings["BN014"]["severity"] == "error" and code == 1
            assert "bncheck recalibrate" in findings["BN015"]["message"]
        else:
            message = findings["BN015"]["message"]
            assert "do not recalibrate" in message
            # In PyTorch's words, as the rest of a PyTorch model's report.
            assert "model.train()" in message and "training=True" not in message


def test_onnx_inference_is_onnxruntimes_own(nets: dict[str, Any]) -> None:
    import onnxruntime

    from bncheck.probe.runtime import STORED
    from bncheck.probe.runtimes.onnx_model import OnnxRunner
    from bncheck.readers.onnx import onnx_graph

    path = nets["stale"]["onnx"]
    batch = nets["data"].test_x[:32]
    own = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [expected] = own.run(None, {"image": batch})
    with OnnxRunner(onnxruntime, onnx_graph.load(str(path)), path.parent) as runner:
        [stored] = runner.run([batch], STORED)
    assert np.array_equal(stored.outputs[0][1], expected)


def test_torchscript_inference_is_evals_own_and_leaves_the_module_as_it_was(
    nets: dict[str, Any],
) -> None:
    from bncheck.probe.runtime import ESTIMATED, STORED, TRAINING
    from bncheck.probe.runtimes.torchscript_model import TorchScriptRunner

    module = torch.jit.load(str(nets["stale"]["torchscript"]))
    before = {name: value.clone() for name, value in module.state_dict().items()}
    batch = nets["data"].test_x[:32]
    with torch.no_grad():
        expected = module.eval()(torch.from_numpy(batch)).numpy()
    with TorchScriptRunner(torch, module) as runner:
        stored, training = runner.run([batch], STORED, TRAINING)
        # The batch moments read back from the update are the batch's own.
        [moments] = [m for m in training.moments if m.path == "features.1"]
        runner.use_estimates({"features.1": (np.zeros(8), np.ones(8))})
        runner.run([batch], ESTIMATED)
    assert np.array_equal(stored.outputs[0][1], expected)
    weight = before["features.0.weight"]
    conv = torch.nn.functional.conv2d(torch.from_numpy(batch), weight, padding=1)
    np.testing.assert_allclose(moments.mean, conv.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        moments.unbiased_variance, conv.var((0, 2, 3), unbiased=True).numpy(), rtol=1e-3
    )
    after = module.state_dict()
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert not module.training


def recalibrated(
    run_cli: Run, nets: dict[str, Any], model: Path, out: Path, *extra: object
) -> CliResult:
    return run_cli(
        "recalibrate",
        model,
        "--data",
        nets["calibration"],
        "--validate",
        nets["validation"],
        "-o",
        out,
        *extra,
    )


def verified(text: str) -> tuple[float, float]:
    """The accuracies before and after that recalibrate printed, as fractions."""
    found = re.search(r"accuracy ([0-9.]+)% with the stored statistics, ([0-9.]+)% with the", text)
    assert found is not None, text
    return float(found.group(1)) / 100, float(found.group(2)) / 100


def test_recalibrating_a_stale_onnx_model(run_cli: Run, nets: dict[str, Any]) -> None:
    import onnxruntime

    out = nets["out"] / "repaired.onnx"
    result = recalibrated(run_cli, nets, nets["stale"]["onnx"], out)
    assert result.code == 0, result.err
    before, after = verified(result.out)
    validation = np.load(nets["validation"])
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    [logits] = session.run(None, {"image": validation["x"]})
    measured = float((logits.argmax(1) == validation["y"]).mean())
    assert measured == pytest.approx(after, abs=0.0006) and after > before + 0.3


def test_a_state_dict_is_recalibrated_through_its_runnable_export(
    run_cli: Run, nets: dict[str, Any]
) -> None:
    out = nets["out"] / "repaired.pth"
    result = recalibrated(
        run_cli, nets, nets["stale"]["state_dict"], out, "--runnable", nets["stale"]["onnx"]
    )
    assert result.code == 0, result.err
    before, after = verified(result.out)
    net = torch_nets.Net(momentum=0.001)
    net.load_state_dict(torch.load(out, weights_only=True))
    validation = np.load(nets["validation"])
    assert torch_nets.accuracy(net.eval(), validation["x"], validation["y"]) == pytest.approx(
        after, abs=0.0006
    )
    # PyTorch's own update_bn on the same calibration data gives the same statistics, but for
    # the batches' make-up (bncheck draws them shuffled): a layer after the first normalises
    # each batch by its own statistics.
    reference = torch_nets.reestimated(nets["stale"]["net"], np.load(nets["calibration"])["x"])
    written = torch.load(out, weights_only=True)
    for name, value in reference.state_dict().items():
        if name.endswith(("running_mean", "running_var")):
            np.testing.assert_allclose(written[name].numpy(), value.numpy(), rtol=1e-2, atol=1e-3)


def test_a_worse_repair_of_an_eval_trained_network_is_refused(
    run_cli: Run, nets: dict[str, Any]
) -> None:
    out = nets["out"] / "refused.pt"
    result = recalibrated(
        run_cli,
        nets,
        nets["eval_trained"]["torchscript"],
        out,
        "--unsafe",
        "--include-untouched",
    )
    before, after = verified(result.out)
    assert result.code == 1 and after < before - 0.2 and not out.exists()
    assert "not written" in result.out


@pytest.mark.parametrize(
    ("model", "extra", "says"),
    [
        ("state_dict", (), "give --runnable FILE"),
        ("torchscript", (), "pass --unsafe"),
        ("state_dict", ("--runnable", "heldout"), "give the network's ONNX or TorchScript"),
    ],
)
def test_what_cannot_run_is_one_line(
    run_cli: Run, nets: dict[str, Any], model: str, extra: tuple[str, ...], says: str
) -> None:
    extra = tuple(str(nets[value]) if value in nets else value for value in extra)
    out = nets["out"] / "never.pt"
    result = recalibrated(run_cli, nets, nets["stale"][model], out, *extra)
    assert result.code == 2 and says in result.err and len(result.err.splitlines()) == 1
    assert not out.exists()


def test_statistics_an_export_shares_between_layers_are_re_estimated_per_layer(
    run_cli: Run, tmp_path: Path
) -> None:
    """The exporter stores equal tensors once (fresh layers of one width share their zeros and
    ones through Identity nodes): each layer still gets its own estimate."""
    import onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.Flatten(),
    )
    path = torch_nets.export_onnx(net, tmp_path / "fresh.onnx")
    graph = onnx.load(str(path)).graph
    initializers = {tensor.name for tensor in graph.initializer}
    shared = [n for n in graph.node if n.op_type == "BatchNormalization"][1].input[3]
    assert shared not in initializers  # read through an Identity of the other layer's tensor
    data = tmp_path / "data.npy"
    np.save(data, np.random.default_rng(0).standard_normal((256, 1, 8, 8)).astype("float32"))
    result = run_cli("inspect", path, "--data", data, "--format", "json")
    layers = result.json()["models"][0]["probe"]["layers"]
    assert [layer["reestimated"] for layer in layers] == [True, True]
    assert all(layer["population"] is not None for layer in layers)


def test_a_runnable_exported_from_other_weights_is_refused(
    run_cli: Run, nets: dict[str, Any]
) -> None:
    """Its estimates would be written into MODEL, and its accuracy shown as MODEL's."""
    out = nets["out"] / "mismatched.pth"
    result = recalibrated(
        run_cli, nets, nets["healthy"]["state_dict"], out, "--runnable", nets["stale"]["onnx"]
    )
    assert result.code == 2 and "not an export of MODEL" in result.err and not out.exists()


def test_a_traced_archive_says_how_to_export_it(run_cli: Run, nets: dict[str, Any]) -> None:
    traced = nets["out"] / "traced.pt"
    example = torch.from_numpy(nets["data"].test_x[:2])
    torch.jit.trace(nets["healthy"]["net"], example).save(str(traced))
    result = run_cli("inspect", traced, "--unsafe", "--data", nets["heldout"], "--format", "json")
    error = result.json()["models"][0]["error"]
    assert result.code == 3 and "traced archive" in error and "torch.jit.script" in error


def test_an_error_inside_torchscript_is_reported_by_its_own_message() -> None:
    """The interpreter's tracebacks of the archive's code come first; the error is the last
    line (data in the wrong layout, here)."""
    from bncheck.probe.runtimes.torchscript_model import _one_line

    message = (
        "The following operation failed in the TorchScript interpreter.\n"
        "Traceback of TorchScript, serialized code (most recent call last):\n"
        '  File "code/__torch__.py", line 15, in forward\n'
        "    _0 = (bn1).forward((conv1).forward(x, ), )\n"
        "                        ~~~~~~~~~~~~~~ <--- HERE\n"
        "RuntimeError: Given groups=1, weight of size [16, 1, 3, 3], expected input[4, 8, 8, 1] "
        "to have 1 channels, but got 8 channels instead\n"
    )
    assert _one_line(RuntimeError(message)) == (
        "RuntimeError: Given groups=1, weight of size [16, 1, 3, 3], expected input[4, 8, 8, 1] "
        "to have 1 channels, but got 8 channels instead"
    )
