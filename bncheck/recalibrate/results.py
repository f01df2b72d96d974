"""What a recalibration did: per-layer changes, the verification, and the written model's report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field, replace

import numpy as np

from bncheck.findings import ExitCode, FailOn, ModelResult, Report
from bncheck.probe.results import Metric, Population, staleness
from bncheck.records import record

RECALIBRATED = "recalibrated"
FROZEN = "kept (frozen)"
UNTOUCHED = "kept (never updated)"
DID_NOT_RUN = "kept (did not run)"
NOT_LOADED = "kept (not in the loaded model)"

#: Why a layer keeps its statistics, for each status other than ``recalibrated``.
KEPT_BECAUSE = {
    FROZEN: "trainable=False: the layers after it learned with its statistics "
    "(--include-frozen re-estimates it anyway)",
    UNTOUCHED: "its statistics never moved while its scale and offset trained (gamma and beta; "
    "weight and bias in PyTorch), so the network may have "
    "learned with them and new ones can make it worse (measure with bncheck inspect and labelled "
    "--data; --include-untouched re-estimates it anyway)",
    DID_NOT_RUN: "the layer did not run on the data, or ran where it cannot be observed",
    NOT_LOADED: "Keras's loaded model has no such layer, or the file does not locate its arrays",
}


@record
class LayerChange:
    """How far one layer's statistics moved (or why they did not), in the probe's vocabulary
    (``bncheck.probe.results``) with the old statistics as stored and the new as reference."""

    path: str
    status: str
    """``recalibrated``, or why the layer kept its statistics (frozen, did not run, ...)."""
    mean_shift: float | None = None
    """Root mean square over channels of ``|old - new mean| / sqrt(new variance + epsilon)``:
    how many standard deviations the moving mean moved."""
    max_mean_shift: float | None = None
    variance_factor: float | None = None
    """How far the old variances were off the new ones, typically, as a factor >= 1."""
    worst_variance_ratio: float | None = None
    """The variance ratio (old over new) of the channel furthest from 1."""

    @classmethod
    def measured(
        cls,
        path: str,
        old: tuple[np.ndarray, np.ndarray],
        new: tuple[np.ndarray, np.ndarray],
        epsilon: float,
    ) -> LayerChange:
        exact = np.zeros_like(np.asarray(new[0], dtype=np.float64))
        figures = staleness(old[0], old[1], Population(new[0], new[1], exact, exact, 0), epsilon)
        if figures is None:  # old statistics that were not finite
            return cls(path=path, status=RECALIBRATED)
        worst = int(np.argmax(np.abs(np.log(figures.channel_ratio))))
        return cls(
            path=path,
            status=RECALIBRATED,
            mean_shift=figures.mean_shift,
            max_mean_shift=float(np.max(figures.channel_shift)),
            variance_factor=figures.variance_factor,
            worst_variance_ratio=float(figures.channel_ratio[worst]),
        )


@record
class Verification:
    """The model with its stored statistics against the model with the new ones, in inference
    mode, on held-out or calibration data."""

    on: str
    """The data measured on."""
    held_out: bool
    """``--validate`` data; False when it is the data the statistics were estimated from."""
    samples: int
    metric: Metric | None
    """Before (``stored``) and after (``reestimated``), where the data has labels."""
    changed_predictions: float | None
    """Share of samples whose top-1 class changes (classifier outputs)."""
    relative_change: float
    """``|after - before| / |before|`` over all samples."""

    @property
    def described(self) -> str:
        which = "held-out" if self.held_out else "calibration"
        return f"{self.on} ({which} data, {self.samples} samples)"


@record
class Recalibration:
    """Everything a recalibration did, ready to render: the per-layer changes, the verification
    (the metric before and after where the data has labels, otherwise how many predictions
    change) and whether the repaired model was written."""

    model: str
    """The model's path, or a live model's name."""
    output: str | None
    """Where the repaired model goes; ``None`` when no output was asked for."""
    data: str
    """The data the statistics were estimated from."""
    batches: int
    samples: int
    """Samples the new statistics average over."""
    layers: tuple[LayerChange, ...]
    """Every BatchNorm layer of the model, in the order the static report lists them."""
    verification: Verification | None
    """``None`` when there was nothing to re-estimate."""
    refusal: str | None
    """Why the output is not to be written without ``--force``; ``None`` when it may be."""
    fail_on: FailOn
    statistics: Mapping[str, Population] = field(default_factory=dict, repr=False)
    """The re-estimated statistics by layer path (``mean`` and ``variance`` are what is
    written, or would be)."""
    written_to: str | None = None
    """Where the repaired model was written; ``None`` when nothing was."""
    writer: str | None = None
    """Who writes instead of this process: the chief, for the other workers of a cluster."""
    repaired: ModelResult | None = None
    """The usual inspection of the written model (static rules and the probe on the data), by
    the command line; ``None`` otherwise."""

    def written(self, target: str, repaired: ModelResult | None = None) -> Recalibration:
        return replace(self, written_to=target, repaired=repaired)

    @property
    def report(self) -> Report | None:
        """The report of the written model; ``None`` when nothing was written."""
        if self.repaired is None:
            return None
        return Report(models=(self.repaired,), fail_on=self.fail_on)

    @property
    def exit_code(self) -> ExitCode:
        """The written model's, like ``inspect``; 1 when nothing was written, except on a
        worker that leaves the writing to the chief: its share is done (0)."""
        report = self.report
        if report is not None:
            return report.exit_code
        if self.written_to is not None or self.writer is not None:
            return ExitCode.OK
        return ExitCode.FINDINGS
