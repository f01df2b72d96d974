"""Tiny PyTorch networks trained on the 10-class digits, the ways users train them, for tests
that hold bncheck to the measured truth. Importing this module imports torch.

- ``healthy``: trained in ``train()`` mode;
- ``stale``: trained in ``train()`` mode at momentum 0.001, so the running statistics lag far
  behind the weights;
- ``eval_trained``: trained in ``eval()`` mode from the start, so the statistics never moved and
  the network learned with them (re-estimating them breaks it);
- ``untracked``: ``track_running_stats=False``, so inference normalises with each batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn


@dataclass(frozen=True)
class Digits:
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def digits() -> Digits:
    """The digits as ``(N, 1, 8, 8)`` float32 in [0, 1], shuffled with a fixed seed, 1,200 to
    train on and 597 held out."""
    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    x = (data.images[order] / 16.0).astype(np.float32)[:, None]
    y = data.target[order].astype(np.int64)
    return Digits(x[:1200], y[:1200], x[1200:], y[1200:])


class Net(nn.Module):
    def __init__(self, momentum: float | None = 0.1, track: bool = True) -> None:
        super().__init__()
        options: dict[str, Any] = {"momentum": momentum, "track_running_stats": track}
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1, bias=False),
            nn.BatchNorm2d(8, **options),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16, **options),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(net: Net, data: Digits, mode: Callable[[Net], Any], epochs: int = 4) -> Net:
    torch.manual_seed(0)
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    for epoch in range(epochs):
        if epoch == epochs - 1:
            # A last epoch at a tenth of the rate, so that the running statistics of a healthy
            # network catch up with its final weights.
            for group in optimiser.param_groups:
                group["lr"] = 0.001
        order = torch.randperm(len(x))
        for start in range(0, len(x), 32):
            rows = order[start : start + 32]
            mode(net)
            optimiser.zero_grad()
            nn.functional.cross_entropy(net(x[rows]), y[rows]).backward()
            optimiser.step()
    return net.eval()


def trained(kind: str, data: Digits) -> Net:
    torch.manual_seed(0)
    if kind == "healthy":
        return train(Net(), data, lambda net: net.train())
    if kind == "stale":
        return train(Net(momentum=0.001), data, lambda net: net.train())
    if kind == "eval_trained":
        # Without normalisation it learns more slowly.
        return train(Net(), data, lambda net: net.eval(), epochs=10)
    if kind == "untracked":
        return train(Net(track=False), data, lambda net: net.train())
    raise ValueError(kind)


def accuracy(net: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def reestimated(net: Net, x: np.ndarray) -> Net:
    """A copy of ``net`` with statistics re-estimated by PyTorch's own ``update_bn``."""
    copy = Net()
    copy.load_state_dict(net.state_dict())
    batches = [torch.from_numpy(x[start : start + 32]) for start in range(0, len(x), 32)]
    torch.optim.swa_utils.update_bn(batches, copy)
    return copy.eval()


def export_onnx(net: nn.Module, path: Path) -> Path:
    """An ONNX export with a dynamic batch dimension, BatchNormalization nodes kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation notes
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, 1, 8, 8),),
            str(path),
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
            do_constant_folding=False,
        )
    return path


def export_torchscript(net: nn.Module, path: Path) -> Path:
    torch.jit.script(net.eval()).save(str(path))
    return path
