"""A PyTorch network whose BatchNorm ran with momentum 0: the statistics never moved, the network
learned with batch statistics, and re-estimating them is the repair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bncheck.readers import read_model
from bncheck.recalibrate.results import UNTOUCHED
from bncheck.recalibrate.runtimes import choose


def network(seed: int = 0, momentum: float = 0.0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4, momentum=momentum),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )


def trained(path: Path, seed: int = 0) -> torch.nn.Sequential:
    """Some training steps: batch statistics normalise every batch, and momentum 0 keeps none
    of them; the counter counts the batches."""
    net = network(seed)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    rng = np.random.default_rng(0)
    net.train()
    for _ in range(5):
        x = torch.from_numpy(rng.normal(1.0, 2.0, (16, 1, 8, 8)).astype("f"))
        y = torch.from_numpy(rng.integers(0, 10, 16))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    torch.save(net.state_dict(), path)
    return net


def refusal(run_cli: Any, tmp_path: Path, runnable: Path) -> str:
    """``recalibrate state.pt --runnable RUNNABLE``, on random data, refused before any work:
    its one line; nothing is written."""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", x=rng.normal(1.0, 2.0, (64, 1, 8, 8)).astype("f"))
    result = run_cli(
        "recalibrate", tmp_path / "state.pt", "--runnable", runnable, "--unsafe",
        "--data", tmp_path / "data.npz", "-o", tmp_path / "fixed.pt",
    )  # fmt: skip
    assert result.code == 2, result.err
    assert not (tmp_path / "fixed.pt").exists()
    [line] = result.err.splitlines()
    return str(line)


def test_the_layer_is_re_estimated_by_default(tmp_path: Path) -> None:
    net = trained(tmp_path / "state.pt")
    description = read_model(str(tmp_path / "state.pt"))
    [layer] = description.layers
    assert layer.num_batches_tracked == 5
    assert np.all(layer.moving_mean == 0) and np.all(layer.moving_variance == 1)
    from bncheck.probe.runtime import LayerInfo

    bn: Any = net[1]
    info = LayerInfo(
        path=layer.path,
        trainable=True,
        epsilon=bn.eps,
        momentum=0.1,
        moving_mean=bn.running_mean.numpy().astype(np.float64),
        moving_variance=bn.running_var.numpy().astype(np.float64),
    )
    targets, kept = choose(description, [info], include_frozen=False, include_untouched=False)
    assert [target.path for target in targets] == [layer.path]
    assert kept.get(layer.path) != UNTOUCHED


def test_a_scripted_export_with_momentum_0_says_how_to_make_one_that_works(
    run_cli: Any, tmp_path: Path
) -> None:
    net = trained(tmp_path / "state.pt")
    torch.jit.script(net.eval()).save(str(tmp_path / "scripted.pt"))
    line = refusal(run_cli, tmp_path, tmp_path / "scripted.pt")
    assert "has momentum 0, which TorchScript compiles in" in line
    assert "script the network again with momentum=0.1" in line
    # The probe of the same archive says so too, beside what it measured.
    probed = run_cli(
        "inspect", tmp_path / "scripted.pt", "--unsafe", "--data", tmp_path / "data.npz",
        "--format", "json",
    )  # fmt: skip
    [model] = probed.json()["models"]
    [note] = [note for note in model["probe"]["notes"] if "has momentum 0" in note]
    assert note.startswith("layer 1 has momentum 0, which TorchScript compiles in")
    assert "so it is not re-estimated here: script the network again" in note


def test_another_networks_export_is_refused_though_its_statistics_are_the_same(
    run_cli: Any, tmp_path: Path
) -> None:
    """Two networks trained with momentum 0 both hold the initial statistics: their weights
    tell them apart, and an export of the other one is no runnable twin of MODEL."""
    trained(tmp_path / "state.pt", seed=0)
    other = trained(tmp_path / "other.pt", seed=1)
    twin = network(seed=1, momentum=0.1)
    twin.load_state_dict(other.state_dict())
    torch.jit.script(twin.eval()).save(str(tmp_path / "other-scripted.pt"))
    line = refusal(run_cli, tmp_path, tmp_path / "other-scripted.pt")
    assert line.startswith(f"bncheck: error: {tmp_path / 'other-scripted.pt'}: the runnable file's")
    assert "holds other weights than MODEL's: it is not an export of MODEL" in line
