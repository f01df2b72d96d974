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


def network() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4, momentum=0.0),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 8 * 8, 10),
    )


def trained(path: Path) -> torch.nn.Sequential:
    """Some training steps: batch statistics normalise every batch, and momentum 0 keeps none
    of them; the counter counts the batches."""
    net = network()
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
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "data.npz", x=rng.normal(1.0, 2.0, (64, 1, 8, 8)).astype("f"))
    result = run_cli(
        "recalibrate",
        tmp_path / "state.pt",
        "--runnable",
        tmp_path / "scripted.pt",
        "--unsafe",
        "--data",
        tmp_path / "data.npz",
        "-o",
        tmp_path / "fixed.pt",
    )
    assert result.code == 2, result.err
    [line] = result.err.splitlines()
    assert "momentum is 0, which TorchScript compiles in" in line
    assert "script the network again with momentum=0.1" in line
    assert not (tmp_path / "fixed.pt").exists()
