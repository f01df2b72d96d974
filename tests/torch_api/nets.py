"""Tiny networks on scikit-learn's 10-class 8x8 digits, trained at test time, the right way
and the wrong ways. Importable by spawned processes (the distributed tests)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

#: Training batch size.
BATCH = 32
#: Samples held out for evaluation (the rest of the 1,797 digits train).
HELD_OUT = 397

Batches = list[tuple[torch.Tensor, torch.Tensor]]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(n, 1, 8, 8)`` images in [0, 1] and their labels, shuffled once."""
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    images = torch.tensor(data.images[order] / 16.0, dtype=torch.float32)[:, None]
    return images, torch.tensor(data.target[order])


def split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """(training, held-out) digits."""
    images, labels = digits()
    return (images[HELD_OUT:], labels[HELD_OUT:]), (images[:HELD_OUT], labels[:HELD_OUT])


def batches(
    data: tuple[torch.Tensor, torch.Tensor],
    size: int = BATCH,
    change: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Batches:
    """The data in batches of ``size`` (the last one shorter), each image changed by
    ``change``."""
    images, labels = data
    if change is not None:
        images = change(images)
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def net(momentum: float | None = 0.1, seed: int = 0) -> nn.Sequential:
    """Two convolutions with BatchNorm and a linear head."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16, momentum=momentum),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32, momentum=momentum),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def train(
    model: nn.Module,
    data: Batches,
    epochs: int,
    train_mode: bool = True,
    lr: float = 1e-2,
    after_step: Callable[[], object] | None = None,
) -> nn.Module:
    """Adam on cross-entropy; ``train_mode=False`` trains in ``model.eval()``, the bug."""
    optimizer = torch.optim.Adam(model.parameters(), lr)
    for _ in range(epochs):
        for images, labels in data:
            model.train(train_mode)
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
    return model


def accuracy(model: nn.Module, data: Batches) -> float:
    """Top-1 accuracy in ``eval()``, computed by torch alone."""
    model.eval()
    with torch.no_grad():
        right = sum(int((model(images).argmax(1) == labels).sum()) for images, labels in data)
    return right / sum(len(labels) for _, labels in data)


def inverted(images: torch.Tensor) -> torch.Tensor:
    """The digits in negative: a change of data the running statistics do not describe."""
    return 1.0 - images
