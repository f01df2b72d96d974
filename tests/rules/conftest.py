from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from bncheck.findings import Problem
from bncheck.model import BNLayer, CheckpointGroup, InitialValues


def layer(**overrides: Any) -> BNLayer:
    """A healthy, trained-looking 4-channel layer; keyword arguments replace any field."""
    fields: dict[str, Any] = {
        "path": "model/bn",
        "name": "bn",
        "class_name": "BatchNormalization",
        "gamma": np.array([0.9, 1.1, 1.2, 0.8], dtype="float32"),
        "beta": np.array([0.1, -0.2, 0.05, 0.0], dtype="float32"),
        "moving_mean": np.array([0.3, -1.2, 0.01, 2.0], dtype="float32"),
        "moving_variance": np.array([0.5, 2.0, 0.04, 1.3], dtype="float32"),
        "axis": (-1,),
        "momentum": 0.99,
        "epsilon": 1e-3,
        "center": True,
        "scale": True,
        "trainable": True,
        "initial": InitialValues(),
    }
    for key, value in overrides.items():
        fields[key] = np.asarray(value, dtype="float32") if isinstance(value, list) else value
    return BNLayer(**fields)


def checkpoint_group(path: str, *arrays: str, channels: int = 4) -> CheckpointGroup:
    """A group of BatchNorm variables named ``path/<array>`` holding ``channels`` values each."""
    return CheckpointGroup(
        path=path,
        keys={name: f"{path}/{name}" for name in arrays},
        shapes={name: (channels,) for name in arrays},
        found_by="name scope",
    )


def problems(rule: ModuleType, subject: object, **options: float) -> list[Problem]:
    return list(rule.check(subject, {**rule.OPTIONS, **options}))
