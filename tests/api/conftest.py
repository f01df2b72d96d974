from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: Training batch size of the guard tests: a realistic one, not a toy one.
BATCH = 32


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, all 10 classes, as 8x8x1 images in [0, 1] and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images / 16.0).astype("float32")[..., None], data.target.astype("int32")


def batches(data: tuple[np.ndarray, np.ndarray], count: int) -> list[tuple[Any, Any]]:
    """``count`` batches of ``BATCH`` samples, cycling through the data in a fixed shuffle."""
    images, labels = data
    order = np.random.default_rng(0).permutation(len(images))
    picks = [order[(i * BATCH + np.arange(BATCH)) % len(order)] for i in range(count)]
    return [(images[pick], labels[pick]) for pick in picks]
