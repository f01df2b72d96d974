"""momentum is 1.0 or more, so the moving statistics can never change.

Keras updates ``moving = momentum * moving + (1 - momentum) * batch``. With momentum 1.0 every
update keeps all of the old value: the statistics stay at their initial 0 and 1 forever (or at
whatever they were when momentum was raised). Above 1.0 the update diverges.

PyTorch's momentum is the weight of the new batch instead, so there momentum 0 is the value that
never updates.

Why it happens: an attempt to "freeze" the statistics by raising momentum; a value written
for another framework or a typo.

How to fix: use a momentum in [0.9, 0.999] while training; to freeze statistics use
``trainable=False`` instead; to repair statistics that never moved use ``bncheck recalibrate``.

Passing: momentum 0.99.
Failing: momentum 1.0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN008"
NAME = "momentum-never-updates"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    kept = layer.keras_momentum
    if layer.momentum is None or kept is None or kept < 1.0:
        return
    effect = "never change" if kept == 1.0 else "diverge"
    convention = " (PyTorch: the weight of each new batch)" if layer.framework == "pytorch" else ""
    yield Problem(
        message=(
            f"momentum={layer.momentum:g}{convention}: the moving statistics {effect} during "
            "training"
        ),
        layer=layer.path,
        details={"momentum": layer.momentum},
    )
