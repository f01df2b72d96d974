"""Training-mode and inference-mode outputs disagree strongly on real data.

On one batch of real data (``--data``) the probe compares the model's outputs with BatchNorm in
training mode (batch statistics) and in inference mode (moving statistics); every other layer stays
in inference mode. For a healthy model they nearly agree, because the moving statistics are the
average of the batch statistics. The finding gives the relative error
``|training - inference| / |training|`` and, for a classifier-shaped output (samples x classes),
the fraction of samples whose top-1 class is the same in both modes.

This is how stale statistics show at the output: training accuracy looks fine while the deployed
model is wrong (100% vs 72% accuracy for ``fixtures/probe/stale_stats.keras``). Synthetic data
cannot judge it: random inputs are normalised to unit variance in training mode but with the
real data's statistics in inference mode, so a healthy model would disagree too.

How to fix: ``bncheck recalibrate MODEL --data DATA -o FIXED``; BN014 names the stale layers.

Options:
  max_relative_error: a larger relative error is reported.
  min_top1_agreement: a smaller top-1 agreement is reported (classifier outputs).

Passing: relative error 0.05, top-1 agreement 100% (``fixtures/probe/recalibrated.keras``).
Failing: relative error 0.63, top-1 agreement 81% (``fixtures/probe/stale_stats.keras``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.probe.results import TRAINING, ProbeResult

ID = "BN015"
NAME = "mode-divergence"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {"max_relative_error": 0.25, "min_top1_agreement": 0.9}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    if TRAINING not in result.modes or not result.real_data:
        return
    for output in result.outputs:
        error, agreement = output.relative_error, output.top1_agreement
        if error is None:
            continue
        diverges = error > options["max_relative_error"]
        disagrees = agreement is not None and agreement < options["min_top1_agreement"]
        if not (diverges or disagrees):
            continue
        top1 = (
            f", top-1 class agrees for {agreement:.0%} of samples" if agreement is not None else ""
        )
        yield Problem(
            message=(
                f"output {output.name!r} differs between training and inference mode on real "
                f"data: relative error {error:.3g}{top1}"
            ),
            details={
                "output": output.name,
                "relative_error": error,
                "top1_agreement": agreement,
                "samples": result.data.samples if result.data else None,
            },
        )
