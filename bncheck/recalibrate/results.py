"""What a recalibration did: per-layer changes and the probe's verdict before and after."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bncheck.findings import FailOn, Finding, ModelResult, Report
from bncheck.probe.results import ProbeResult

RECALIBRATED = "recalibrated"


@dataclass(frozen=True)
class LayerChange:
    """How far one layer's statistics moved (or why they did not)."""

    path: str
    status: str
    """``recalibrated``, or why the layer kept its statistics (frozen, did not run, ...)."""
    mean_shift: float | None = None
    """Root mean square over channels of ``|new - old mean| / sqrt(new variance + epsilon)``:
    how many standard deviations the moving mean moved."""
    max_mean_shift: float | None = None
    variance_ratio: float | None = None
    """Geometric mean over channels of ``new / old`` moving variance (``epsilon`` added)."""
    min_variance_ratio: float | None = None
    max_variance_ratio: float | None = None

    @classmethod
    def measured(
        cls,
        path: str,
        old: tuple[np.ndarray, np.ndarray],
        new: tuple[np.ndarray, np.ndarray],
        epsilon: float,
    ) -> LayerChange:
        old_mean, old_variance = (np.asarray(a, dtype=np.float64).ravel() for a in old)
        new_mean, new_variance = (np.asarray(a, dtype=np.float64).ravel() for a in new)
        with np.errstate(all="ignore"):
            shift = np.abs(new_mean - old_mean) / np.sqrt(new_variance + epsilon)
            ratio = (new_variance + epsilon) / (old_variance + epsilon)
            log_ratio = np.log(ratio)
        return cls(
            path=path,
            status=RECALIBRATED,
            mean_shift=float(np.sqrt(np.mean(np.square(shift)))),
            max_mean_shift=float(np.max(shift)),
            variance_ratio=float(np.exp(np.mean(log_ratio))),
            min_variance_ratio=float(np.min(ratio)),
            max_variance_ratio=float(np.max(ratio)),
        )


@dataclass(frozen=True)
class Verdict:
    """The probe on one batch of the data, and what the probe rules made of it."""

    probe: ProbeResult
    findings: tuple[Finding, ...]


@dataclass(frozen=True)
class Recalibration:
    """Everything ``bncheck recalibrate`` did, ready to render."""

    model: str
    output: str
    data: str
    batches: int
    samples: int
    """Samples the new statistics average over."""
    layers: tuple[LayerChange, ...]
    """Every BatchNorm layer of the model, in the order the static report lists them."""
    before: Verdict
    after: Verdict
    repaired: ModelResult
    """The usual inspection of the written model: static rules and the probe after."""
    fail_on: FailOn

    @property
    def report(self) -> Report:
        """The report the exit code comes from: the repaired model's."""
        return Report(models=(self.repaired,), fail_on=self.fail_on)
