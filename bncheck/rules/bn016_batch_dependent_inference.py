"""In inference mode, a sample's output depends on the other samples in its batch.

At inference every BatchNorm layer should normalise with its moving statistics, so a sample's
prediction is the same whatever it is batched with. The probe runs the first half of its batch
alone and compares those samples' outputs with their outputs inside the whole batch, in
inference mode. Any change beyond float round-off means something still normalises with batch
statistics at predict time: a batch of one gets garbage, and results change with the batch size.

The finding names the BatchNorm layers whose inference-mode output differs from normalising
their input with their moving statistics, by how much relative to the output (where the layers
are visible: not inside a SavedModel).

"Inference mode" is the model called without a ``training`` argument, as serving code and custom
loops call it: Keras 3's ``predict`` passes ``training=False``, which overrides a hard-coded
``training=True`` in a functional graph, but ``model(x)`` keeps it, and Keras 3 then runs the
layers called after it in training mode too.

Why it happens: a graph built with ``bn(x, training=True)`` (see BN010), a custom layer that
calls its BatchNorm with ``training=True``, or a Keras-2-era ``learning_phase`` hard-wired to 1.

How to fix: call BatchNorm layers without a hard-coded ``training`` argument and let Keras pass
the mode; rebuild the model and load its weights.

Options:
  tolerance: relative change still counted as round-off.

Passing: the first 16 samples get identical outputs alone and in the batch of 32.
Failing: their outputs change by 6.6% when the other 16 samples are left out (a small CNN whose
graph calls its first BatchNorm layer as ``bn1(x, training=True)``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck.findings import Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import ProbeResult

ID = "BN016"
NAME = "batch-dependent-inference"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {"tolerance": 1e-4}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    tolerance = options["tolerance"]
    changed = [
        output
        for output in result.outputs
        if output.batch_dependence is not None and output.batch_dependence > tolerance
    ]
    if not changed:
        return
    culprits = [layer for layer in result.layers if layer.moving_stats_error > tolerance]
    worst = max(changed, key=lambda output: output.batch_dependence or 0.0)
    half = result.data.batch_size // 2 if result.data else 0
    blamed = ""
    if culprits:
        named = ", ".join(
            f"{layer.path} (off by {layer.moving_stats_error:.3g})" for layer in culprits[:3]
        )
        more = f" and {len(culprits) - 3} more" if len(culprits) > 3 else ""
        blamed = (
            f"; layers normalising with batch statistics instead of their moving statistics: "
            f"{named}{more}"
        )
    yield Problem(
        message=(
            f"in inference mode the outputs of the first {half} samples change by "
            f"{worst.batch_dependence:.3g} (relative) when the rest of their batch is left "
            f"out{blamed}"
        ),
        layer=culprits[0].path if culprits else None,
        details={
            "outputs": {output.name: output.batch_dependence for output in changed},
            "layers": {layer.path: layer.moving_stats_error for layer in culprits},
        },
    )
