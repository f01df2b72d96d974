"""The layer multiplies some channel by a huge factor at inference.

At inference a channel is scaled by ``|gamma| / sqrt(moving_variance + epsilon)``. When the
moving variance is tiny and gamma is not, that gain is enormous: a small shift of the input (one
the training data never showed) becomes a huge output, and low-precision inference overflows.

When the file does not record epsilon, the framework's default is assumed: Keras's 1e-3, or
PyTorch's 1e-5 for PyTorch and safetensors files.

Why it happens: a channel that was (almost) constant during training, with a small epsilon
(PyTorch's 1e-5 or smaller); or gamma grew large while the variance collapsed.

How to fix: use a larger epsilon (Keras's default 1e-3), re-estimate the statistics over
representative data (``bncheck recalibrate``), or prune the channel.

Options:
  max_gain: a channel whose gain exceeds this is reported.

Passing: gamma 1.1, moving_variance 0.5, epsilon 1e-3 -> gain 1.55.
Failing: gamma 0.8, moving_variance 1e-9, epsilon 1e-9 -> gain 17889.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN006"
NAME = "unstable-gain"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"max_gain": 1e3}

#: Keras's default, used when the file does not record epsilon.
DEFAULT_EPSILON = 1e-3
#: PyTorch's default, used for PyTorch files that do not record eps (state dicts).
PYTORCH_EPSILON = 1e-5


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    variance = np.asarray(layer.moving_variance, dtype=np.float64).ravel()
    gamma = (
        np.ones_like(variance)
        if layer.gamma is None
        else np.abs(np.asarray(layer.gamma, dtype=np.float64).ravel())
    )
    default = PYTORCH_EPSILON if layer.framework == "pytorch" else DEFAULT_EPSILON
    epsilon = default if layer.epsilon is None else layer.epsilon
    denominator = variance + epsilon
    # Non-finite and negative variances are BN003's and BN004's to report.
    valid = np.isfinite(denominator) & np.isfinite(gamma) & (denominator > 0)
    gain = np.zeros_like(variance)
    gain[valid] = gamma[valid] / np.sqrt(denominator[valid])
    unstable = np.flatnonzero(gain > options["max_gain"])
    if unstable.size == 0:
        return
    worst = int(unstable[np.argmax(gain[unstable])])
    yield Problem(
        message=layer.vocabulary.translate(
            f"{unstable.size} of {variance.size} channels have gain |gamma|/sqrt(var+eps) above "
            f"{options['max_gain']:g} (worst: channel {worst}, gain {gain[worst]:.4g}, "
            f"moving_variance {variance[worst]:.3g})"
        ),
        layer=layer.path,
        details={
            "channels": int(unstable.size),
            "worst_channel": worst,
            "worst_gain": float(gain[worst]),
            "epsilon": epsilon,
            "epsilon_assumed": layer.epsilon is None,
        },
    )
