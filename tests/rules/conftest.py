from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from bncheck.findings import Problem
from bncheck.model import BNLayer, CheckpointGroup, InitialValues
from bncheck.probe.results import (
    INFERENCE,
    TRAINING,
    LayerMeasurement,
    OutputMeasurement,
    Population,
    ProbeData,
    ProbeResult,
)


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


def population(
    mean: list[float] | None = None,
    variance: list[float] | None = None,
    mean_error: float = 0.0,
    variance_error: float = 0.0,
    batches: int = 64,
) -> Population:
    """A 4-channel population estimate (by default equal to ``measured_layer``'s statistics),
    with the same standard error in every channel."""
    mean_array = np.array(mean if mean is not None else [0.3, -1.2, 0.01, 2.0], dtype="float64")
    variance_array = np.array(
        variance if variance is not None else [0.5, 2.0, 0.04, 1.3], dtype="float64"
    )
    return Population(
        mean=mean_array,
        variance=variance_array,
        mean_error=np.full(4, mean_error),
        variance_error=np.full(4, variance_error),
        batches=batches,
    )


def measured_layer(**overrides: Any) -> LayerMeasurement:
    """A 4-channel BatchNorm layer whose moving statistics match its population statistics and
    whose activations vary alike in both modes; keyword arguments replace any field."""
    fields: dict[str, Any] = {
        "path": "model/bn",
        "calls": 1,
        "trainable": True,
        "epsilon": 1e-3,
        "moving_mean": np.array([0.3, -1.2, 0.01, 2.0]),
        "moving_variance": np.array([0.5, 2.0, 0.04, 1.3]),
        "population": population(),
        "reestimated": True,
        "momentum": 0.99,
        "inference_spread": 0.8,
        "inference_rms": 1.0,
        "inference_nonfinite": 0,
        "moving_stats_error": 0.0,
        "training_spread": 0.8,
        "training_rms": 1.0,
    }
    for key, value in overrides.items():
        fields[key] = np.asarray(value, dtype="float64") if isinstance(value, list) else value
    return LayerMeasurement(**fields)


def measured_output(**overrides: Any) -> OutputMeasurement:
    """A classifier output that behaves alike in both modes, batches and statistics."""
    fields: dict[str, Any] = {
        "name": "head",
        "inference_spread": 0.5,
        "inference_rms": 0.6,
        "inference_nonfinite": 0,
        "training_spread": 0.5,
        "training_rms": 0.6,
        "relative_error": 0.01,
        "top1_agreement": 1.0,
        "batch_dependence": 0.0,
        "reestimated_relative_error": 0.01,
        "reestimated_top1_agreement": 1.0,
    }
    fields.update(overrides)
    return OutputMeasurement(**fields)


def probe_result(
    layers: tuple[LayerMeasurement, ...] = (),
    outputs: tuple[OutputMeasurement, ...] | None = None,
    real: bool = True,
    **overrides: Any,
) -> ProbeResult:
    """A probe that ran both modes on 2048 samples of real (or synthetic) data."""
    fields: dict[str, Any] = {
        "path": "model.keras",
        "loader": "keras",
        "content": (),
        "unsafe": False,
        "data": ProbeData(
            real=real,
            source="x.npy",
            samples=2048,
            inputs=(("image", (32, 8, 8, 1)),),
            batch_size=32,
            batches=64,
        ),
        "modes": (INFERENCE, TRAINING),
        "outputs": (measured_output(),) if outputs is None else outputs,
        "layers": layers,
    }
    fields.update(overrides)
    return ProbeResult(**fields)


def judge(rule: ModuleType, subject: ProbeResult, **options: float) -> list[Problem]:
    return list(rule.check(subject, {**rule.OPTIONS, **options}))
