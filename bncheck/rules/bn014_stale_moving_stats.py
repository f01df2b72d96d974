"""The moving statistics do not describe the activations the layer actually receives.

With real data (``--data``), the probe measures the per-channel mean and variance of each
BatchNorm layer's input and compares them with the layer's moving statistics:

- standardised mean shift: ``|input mean - moving_mean| / sqrt(input variance + epsilon)``, how
  many standard deviations the moving mean is off;
- variance ratio: ``(moving_variance + epsilon) / (input variance + epsilon)``, off by a factor in
  either direction.

A layer is reported when the typical channel (root mean square over channels of the shift, and
of the logarithm of the ratio) exceeds the thresholds, so one noisy channel of a small batch does
not decide; the worst channels are named in the finding. Problems come worst layer first.

Which mode: each layer's input is measured with every BatchNorm layer in training mode (and every
other layer in inference mode), the activations the moving averages are meant to track. That
isolates each layer's own staleness: measured in inference mode, one stale layer would shift the
inputs of every layer after it and all of them would be reported; that compounding is what
BN013 and BN015 show. It is also the statistic ``bncheck recalibrate`` writes.

Why it happens: the moving averages lag the weights (training too short for the momentum, a
last epoch with a high learning rate), were never updated (BN001), or the data at inference
differs from the training data. Synthetic data cannot judge this, so the rule needs ``--data``.

How to fix: ``bncheck recalibrate MODEL --data DATA -o FIXED`` re-estimates the statistics
exactly; a frozen layer (``trainable=False``) keeps its statistics by design and is reported as
information only.

Options:
  max_mean_shift: a typical standardised mean shift above this reports the layer (warning).
  max_variance_ratio: a typical variance ratio above this (either way) reports the layer.
  severe_mean_shift: a typical mean shift above this escalates the finding (error).
  severe_variance_ratio: a typical variance ratio above this escalates the finding (error).

Passing: typical shift 0.007, variance ratio 1.04 (``fixtures/probe/recalibrated.keras``, bn1).
Failing: typical shift 0.82, variance ratio 24 after one epoch with momentum 0.99
(``fixtures/probe/stale_stats.keras``, bn1).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bncheck.findings import Escalation, Problem, Severity
from bncheck.probe.results import ProbeResult

ID = "BN014"
NAME = "stale-moving-stats"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {
    "max_mean_shift": 0.5,
    "max_variance_ratio": 2.0,
    "severe_mean_shift": 2.0,
    "severe_variance_ratio": 8.0,
}

_WORST_CHANNELS = 3


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    if not result.real_data:
        return
    stale = []
    for layer in result.layers:
        figures = layer.staleness()
        if figures is None:
            continue
        if (
            figures.mean_shift <= options["max_mean_shift"]
            and figures.variance_ratio <= options["max_variance_ratio"]
        ):
            continue
        stale.append((layer, figures))
    stale.sort(key=lambda entry: -entry[1].score)
    for layer, figures in stale:
        shift, ratio = figures.mean_shift, figures.variance_ratio
        channel_shift, channel_ratio = figures.channel_shift, figures.channel_ratio
        severe = shift > options["severe_mean_shift"] or ratio > options["severe_variance_ratio"]
        escalation = (
            Escalation.MITIGATED if not layer.trainable else Escalation.SEVERE if severe else None
        )
        worst_shift = np.argsort(-channel_shift)[:_WORST_CHANNELS]
        worst_ratio = np.argsort(-np.abs(np.log(channel_ratio)))[:_WORST_CHANNELS]
        frozen = (
            " (frozen layer: its statistics are fixed on purpose)" if not layer.trainable else ""
        )
        yield Problem(
            message=(
                f"moving statistics do not match the layer's input on the data: typical mean "
                f"shift {shift:.3g} standard deviations, typical variance ratio {ratio:.3g}x "
                f"(worst: channel {worst_shift[0]} shifted {channel_shift[worst_shift[0]]:.3g}, "
                f"channel {worst_ratio[0]} variance ratio {channel_ratio[worst_ratio[0]]:.3g})"
                f"{frozen}"
            ),
            layer=layer.path,
            details={
                "mean_shift": shift,
                "variance_ratio": ratio,
                "worst_shift_channels": {int(c): float(channel_shift[c]) for c in worst_shift},
                "worst_variance_ratio_channels": {
                    int(c): float(channel_ratio[c]) for c in worst_ratio
                },
                "channels": int(channel_shift.size),
                "frozen": not layer.trainable,
            },
            escalation=escalation,
        )
