"""Hostile inputs to the recalibration of ONNX and PyTorch files: each is refused in one line,
and nothing is written or changed."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import CliResult

torch = pytest.importorskip("torch", reason="the files are made with the torch extra")
onnx = pytest.importorskip("onnx", reason="the ONNX files are made with the onnx package")
pytest.importorskip("onnxruntime", reason="recalibrating ONNX needs the onnx extra")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

Run = Callable[..., CliResult]
CHANNELS = 4
CENTRES = np.array([5.0, -5.0, 3.0, 0.0], np.float32)
NAMES = ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(CHANNELS)

    def forward(self, x: Any) -> Any:
        return self.bn(x)


def onnx_model(net: Net, functions: tuple[Any, ...] = (), nodes: tuple[Any, ...] = ()) -> Any:
    """One BatchNormalization node reading the net's tensors, as a PyTorch export writes it."""
    state = net.state_dict()
    node = helper.make_node("BatchNormalization", ["x", *NAMES], ["y"], name="bn", epsilon=1e-5)
    graph = helper.make_graph(
        [node, *nodes],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, CHANNELS])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, CHANNELS])],
        [numpy_helper.from_array(state[name].numpy(), name) for name in NAMES],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
        functions=list(functions),
    )
    model.ir_version = 8
    model.producer_name = "pytorch"
    return model


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A classifier of 4 shifted Gaussians whose stored statistics are wrong: recalibrating
    it helps, so every writer is reached."""
    out = tmp_path_factory.mktemp("attacks")
    for name, (count, seed) in {"train": (1024, 1), "val": (512, 2)}.items():
        rng = np.random.default_rng(seed)
        x = (rng.standard_normal((count, CHANNELS)) + CENTRES).astype(np.float32)
        np.savez(out / f"{name}.npz", x=x, y=np.argmax(x - CENTRES, axis=1))
    net = Net().eval()
    with torch.no_grad():
        net.bn.running_mean.copy_(torch.tensor([0.1, 0.2, -0.1, 0.05]))
        net.bn.running_var.copy_(torch.tensor([1.1, 0.9, 1.2, 1.0]))
        net.bn.num_batches_tracked.fill_(100)
    torch.save(net.state_dict(), out / "model.pt")
    onnx.save(onnx_model(net), out / "model.onnx")
    return {name: out / name for name in ("train.npz", "val.npz", "model.pt", "model.onnx")} | {
        "net": out / "model.pt",
        "dir": out,
    }


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recalibrate(run_cli: Run, base: dict[str, Path], model: Path, *extra: object) -> CliResult:
    return run_cli(
        "recalibrate", model, "--data", base["train.npz"], "--validate", base["val.npz"], *extra
    )


def one_line(result: CliResult, code: int, says: str) -> None:
    assert result.code == code and says in result.err, (result.code, result.err, result.out)
    assert len(result.err.splitlines()) == 1 and "Traceback" not in result.err


def test_out_is_never_another_input(run_cli: Run, base: dict[str, Path]) -> None:
    runnable, validation = base["model.onnx"], base["val.npz"]
    before = digest(runnable), digest(validation)
    for target, option in ((runnable, "--runnable"), (validation, "--validate")):
        result = recalibrate(run_cli, base, base["model.pt"], "--runnable", runnable, "-o", target)
        one_line(result, 2, f"the {option} file")
    assert (digest(runnable), digest(validation)) == before


def test_an_empty_out_is_a_usage_error(run_cli: Run, base: dict[str, Path]) -> None:
    one_line(recalibrate(run_cli, base, base["model.onnx"], "-o", ""), 2, "-o is empty")


def test_unknown_fields_cannot_make_the_writer_walk_the_file(
    run_cli: Run, base: dict[str, Path]
) -> None:
    """Protocol buffers keep unknown fields as one blob, cheaply; walking them one by one would
    cost time and memory in proportion to the file."""
    padded = base["dir"] / "padded.onnx"
    padded.write_bytes(base["model.onnx"].read_bytes() + bytes([0xA0, 0x06, 0x00]) * 200_000)
    out = base["dir"] / "padded_out.onnx"
    one_line(recalibrate(run_cli, base, padded, "-o", out), 3, "more than the")
    assert not out.exists()


def test_a_local_function_cannot_stand_for_a_runtime_kernel(
    run_cli: Run, base: dict[str, Path]
) -> None:
    """onnxruntime runs its own com.microsoft.Gelu kernel, not a function of that name."""
    decoy = helper.make_function(
        "com.microsoft",
        "Gelu",
        ["X"],
        ["Y"],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_opsetid("", 17)],
    )
    net = Net().eval()
    net.load_state_dict(torch.load(base["net"], weights_only=True))
    model = onnx_model(
        net, (decoy,), (helper.make_node("Gelu", ["y"], ["z"], domain="com.microsoft"),)
    )
    model.graph.output[0].name = "z"
    path = base["dir"] / "decoy.onnx"
    onnx.save(model, path)
    one_line(
        recalibrate(run_cli, base, path, "-o", base["dir"] / "decoy_out.onnx"),
        2,
        "com.microsoft.Gelu",
    )


def test_a_sparse_initializer_shadowing_the_statistics_is_refused(
    run_cli: Run, base: dict[str, Path]
) -> None:
    """onnxruntime would normalise with the sparse tensor, bncheck read the dense one."""
    model = onnx.load(base["model.onnx"])
    values = numpy_helper.from_array(np.full(CHANNELS, 9.0, np.float32), "bn.running_mean")
    indices = numpy_helper.from_array(np.arange(CHANNELS, dtype=np.int64))
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [CHANNELS]))
    path = base["dir"] / "sparse.onnx"
    onnx.save(model, path)
    one_line(run_cli("inspect", path), 3, "both a dense and a sparse initializer")


def test_a_tensor_held_under_two_names_is_not_written(run_cli: Run, base: dict[str, Path]) -> None:
    state = torch.load(base["net"], weights_only=True)
    state["head.offset"] = state["bn.running_mean"]  # one tensor, pickled once, two names
    path = base["dir"] / "tied.pt"
    torch.save(state, path)
    out = base["dir"] / "tied_out.pt"
    result = recalibrate(run_cli, base, path, "--runnable", base["model.onnx"], "-o", out)
    one_line(result, 3, "the same tensor under another name")
    assert not out.exists()
