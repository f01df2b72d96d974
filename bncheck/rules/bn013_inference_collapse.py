"""In inference mode the model gives (nearly) the same output for every input.

The probe runs the data (or one synthetic batch) in inference mode (BatchNorm uses its moving
statistics) and with BatchNorm in training mode (it uses each batch's own statistics). When the
training-mode outputs vary across a batch but the inference-mode outputs do not, the moving
statistics turn every input into the same prediction, and the deployed model is useless however
well training went. Outputs that overflow or become NaN only in inference mode are the same
failure in the other direction. The spreads are averaged over all batches.

The finding names the first BatchNorm layer, in the order the layers ran, from which the
inference-mode activations stop varying across the batch (their relative spread falls below
``max_spread_ratio`` times the training-mode spread) or blow up (grow ``max_growth`` times larger
than in training mode, or turn non-finite), with the figures on both sides. When the layers
are visible, an output that looks collapsed while no BatchNorm layer does (a saturated softmax
giving one confident class for every random input) is not reported; inside a SavedModel the
output alone decides.

Why it happens: a network that trained without batch statistics (a ``tf.function`` loop calling
``model(x)`` without ``training=True``: see BN001), where a deep stack of BatchNorm layers acting
as fixed affine maps lets the signal fade; or statistics that lag far behind the final weights
(high momentum, short training, momentum 1.0).

How to fix: it depends on the cause, which the finding names. A network that trained without
batch statistics is broken: retrain it with ``training=True`` (a 20-BN CNN trained that way on
10-class digits: 10-12% held-out accuracy, chance, in inference mode, in training mode and after
re-estimating the statistics alike). Statistics that merely lag are repaired by re-estimating
them: ``bncheck recalibrate MODEL --data DATA --validate HELD_OUT -o FIXED``; with labelled
``--data``, BN015 says what that would change.

Options:
  max_spread_ratio: inference spread below this fraction of the training spread is a collapse.
  max_growth: inference activations this many times larger than in training mode blow up.

Passing: a batch of 32 digits gets 32 different softmax rows in both modes.
Failing: every digit gets ``[0.4963, 0.5037]`` in inference mode while training mode still
tells them apart; activations stop varying from the 14th of 20 BN layers on (relative spread
0.0066 in inference mode vs 0.85 in training mode): a deep CNN trained on two digit classes by a
loop without ``training=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck.findings import Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import LayerMeasurement, OutputMeasurement, ProbeResult

ID = "BN013"
NAME = "inference-collapse"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {"max_spread_ratio": 0.01, "max_growth": 100.0}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    from bncheck.probe.results import TRAINING

    if TRAINING not in result.modes:
        return
    ratio, growth = options["max_spread_ratio"], options["max_growth"]
    for output in result.outputs:
        failure = _output_failure(output, ratio, growth)
        if failure is None:
            continue
        # Layers whose outputs the runtime could not see (TorchScript) have NaN figures.
        observed = [layer for layer in result.layers if math.isfinite(layer.inference_spread)]
        start = next(
            (
                (layer, how)
                for layer in observed
                if (how := _layer_failure(layer, ratio, growth)) is not None
            ),
            None,
        )
        if observed and start is None:
            # The output saturates (e.g. one confident class for every random input) while no
            # BatchNorm layer loses its signal: not a normalisation failure.
            continue
        where = ""
        details: dict[str, object] = {
            "output": output.name,
            "inference_spread": output.inference_spread,
            "training_spread": output.training_spread,
            "inference_rms": output.inference_rms,
            "training_rms": output.training_rms,
            "samples": result.data.samples if result.data else None,
        }
        if start is not None:
            layer, how = start
            where = (
                f"; activations {how} from {layer.path} on (relative spread "
                f"{layer.inference_spread:.3g} in inference mode vs {layer.training_spread:.3g} "
                f"in training mode, RMS {layer.inference_rms:.3g} vs {layer.training_rms:.3g})"
            )
            details.update(
                first_layer=layer.path,
                first_layer_failure=how,
                first_layer_inference_spread=layer.inference_spread,
                first_layer_training_spread=layer.training_spread,
                first_layer_inference_rms=layer.inference_rms,
                first_layer_training_rms=layer.training_rms,
            )
        untrained = result.learned_without_batch_statistics
        cause = (
            f": the network trained without batch statistics ({len(untrained)} BN layer(s) never "
            "updated, BN001), so it is broken whatever its statistics; retrain with "
            "training=True"
            if untrained
            else ": the moving statistics do not fit the weights; re-estimating them "
            "(bncheck recalibrate) is the repair to try"
        )
        details["trained_without_batch_statistics"] = len(untrained)
        yield Problem(
            message=f"inference-mode output {output.name!r} {failure}{where}{cause}",
            layer=start[0].path if start is not None else None,
            details=details,
        )


def _output_failure(output: OutputMeasurement, ratio: float, growth: float) -> str | None:
    if output.training_spread is None or output.training_rms is None:
        return None
    if output.inference_nonfinite:
        return f"holds {output.inference_nonfinite} NaN/Inf values"
    if output.training_rms > 0 and output.inference_rms > growth * output.training_rms:
        return (
            f"blows up (RMS {output.inference_rms:.3g} vs {output.training_rms:.3g} in training "
            "mode)"
        )
    if output.training_spread > 0 and output.inference_spread <= ratio * output.training_spread:
        return (
            "is nearly identical for every input (relative spread across the batch "
            f"{output.inference_spread:.3g} vs {output.training_spread:.3g} in training mode)"
        )
    return None


def _layer_failure(layer: LayerMeasurement, ratio: float, growth: float) -> str | None:
    if layer.inference_nonfinite:
        return "turn NaN/Inf"
    if layer.training_rms > 0 and layer.inference_rms > growth * layer.training_rms:
        return "blow up"
    if layer.training_spread > 0 and layer.inference_spread <= ratio * layer.training_spread:
        return "stop varying"
    return None
