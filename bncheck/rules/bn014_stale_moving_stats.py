"""The moving statistics do not describe the activations the layer receives on the data.

With real data (``--data``), the probe estimates each BatchNorm layer's population statistics
exactly, as ``bncheck recalibrate`` does: the average over all sampled batches (``--samples``,
default 2,048) of the per-channel mean and variance of the layer's input, with every BatchNorm
layer in training mode (the statistics its gamma and beta were trained against) and every other
layer in inference mode. It compares the stored statistics with that estimate, channel by
channel:

- mean shift: ``|moving_mean - population mean| / sqrt(population variance + epsilon)``, how many
  standard deviations the stored mean is off;
- variance ratio: ``(moving_variance + epsilon) / (population variance + epsilon)``; the layer's
  variance factor is how far off its typical channel is, in either direction, as a factor >= 1.

Estimates carry noise, more with small batches and little data. Each channel's noise is measured
from the spread of the batch statistics across batches, and the typical figures (root mean square
over channels) have the noise's share taken out, so a healthy model is not reported because its
data was small. The worst channels are named; problems come worst layer first.

Layers whose statistics were never updated while gamma and beta trained (or that have neither,
``center=False, scale=False``) are left to BN001 and BN002 (the network may have learned with
those statistics, so the population estimate is not the reference there) and BN008 (momentum
1.0); BN015 measures what replacing them would do, and that measurement settles their finding.
Frozen layers (``trainable=False``) are reported as information only: the layers after them
learned with their stored statistics. So is any stale layer where labelled data shows that
re-estimating would measurably lower the metric (BN015 "do not recalibrate"): the network works
with those statistics, as one fine-tuned with them held (PyTorch's ``eval()``) does, and the
finding says to keep them. And so is one where the 95% interval of that change lies within
BN015's ``max_metric_gain`` either way: the statistics differ from the data's (Dropout before a
BatchNorm shifts what it sees in training), but the network does as well with them.

Why it happens: the moving averages lag the weights (training too short for the momentum, a
last epoch with a high learning rate, momentum 1.0), or the data at inference differs from the
training data. Synthetic data cannot judge this, so the rule needs ``--data``.

How to fix: ``bncheck recalibrate MODEL --data DATA --validate HELD_OUT -o FIXED`` re-estimates
the statistics of trainable layers exactly and writes them only if held-out data confirms the
repair (a CNN fit for one epoch on 10-class digits: 9.8% to 95.5% held-out accuracy). A frozen
layer under a head trained on its statistics is kept: the head learned with them, and
``--include-frozen`` lowered one such model from 60.2% to 46.9% (on others it changed little);
measure with ``--validate`` before writing it.

Options:
  max_mean_shift: a typical mean shift above this reports the layer (warning).
  max_variance_factor: a typical variance factor above this reports the layer.
  severe_mean_shift: a typical mean shift above this escalates the finding (error).
  severe_variance_factor: a typical variance factor above this escalates the finding (error).

Passing: typical shift 0.013, variance factor 1.0 (the dense BN layer of a 10-class digit CNN fit
for 20 epochs with a decaying learning rate, probed on its 1,400 training digits in batches of
8).
Failing: typical shift 2.85, variance factor 38 (the same layer of a CNN fit for one epoch at
learning rate 0.01, when the momentum-0.99 averages had not caught up).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from bncheck import verdict
from bncheck.findings import Escalation, Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import ProbeResult

ID = "BN014"
NAME = "stale-moving-stats"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {
    "max_mean_shift": 0.5,
    "max_variance_factor": 2.0,
    "severe_mean_shift": 2.0,
    "severe_variance_factor": 8.0,
}

_WORST_CHANNELS = 3


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    if not result.real_data:
        return
    stale = []
    for layer in result.layers:
        # None for statistics that never moved (BN001's, BN002's or BN008's: not stale ones).
        figures = verdict.judged_staleness(layer)
        if figures is None:
            continue
        if (
            figures.mean_shift <= options["max_mean_shift"]
            and figures.variance_factor <= options["max_variance_factor"]
        ):
            continue
        stale.append((layer, figures))
    stale.sort(key=lambda entry: -entry[1].score)
    for layer, figures in stale:
        shift, factor = figures.mean_shift, figures.variance_factor
        channel_shift, channel_ratio = figures.channel_shift, figures.channel_ratio
        severe = shift > options["severe_mean_shift"] or factor > options["severe_variance_factor"]
        escalation = (
            Escalation.MITIGATED if not layer.trainable else Escalation.SEVERE if severe else None
        )
        worst_shift = np.argsort(-channel_shift)[:_WORST_CHANNELS]
        worst_ratio = np.argsort(-np.abs(np.log(channel_ratio)))[:_WORST_CHANNELS]
        frozen = (
            " (frozen layer: the layers after it learned with these statistics, and "
            "re-estimating them can break those; recalibrate keeps them unless "
            "--include-frozen, then measure with --validate)"
            if not layer.trainable
            else ""
        )
        worst = int(worst_ratio[0])
        yield Problem(
            message=(
                f"moving statistics do not match the layer's input on the data: typical mean "
                f"shift {shift:.3g} standard deviations, typical variance off by a factor of "
                f"{factor:.3g} (worst: channel {worst_shift[0]} shifted "
                f"{channel_shift[worst_shift[0]]:.3g}, channel {worst} "
                f"{_direction(float(channel_ratio[worst]))})"
                f"{frozen}"
            ),
            layer=layer.path,
            details={
                "mean_shift": shift,
                "variance_factor": factor,
                "worst_shift_channels": {int(c): float(channel_shift[c]) for c in worst_shift},
                "worst_variance_ratio_channels": {
                    int(c): float(channel_ratio[c]) for c in worst_ratio
                },
                "channels": int(channel_shift.size),
                "frozen": not layer.trainable,
                "batches": layer.population.batches if layer.population else 0,
            },
            escalation=escalation,
        )


def _direction(ratio: float) -> str:
    """A channel's variance ratio in words: stored too large or too small, and by how much."""
    if ratio >= 1.0:
        return f"stored variance {ratio:.3g}x the measured one"
    return f"stored variance 1/{1.0 / ratio:.3g} of the measured one"
