"""momentum is 1.0 or more, so the moving statistics can never change.

Keras updates ``moving = momentum * moving + (1 - momentum) * batch``. With momentum 1.0 every
update keeps all of the old value: when the train step runs with momentum 1.0, the statistics
stay at their initial 0 and 1, while ``fit`` trains the weights with batch statistics.
Inference then normalises with statistics that describe nothing the network saw, and its
predictions are garbage (a 3-BN CNN trained by ``fit`` on 10-class digits: 10.6% held-out
accuracy in inference mode, 99.0% in training mode). Above 1.0 the update diverges.

PyTorch's momentum is the weight of the new batch instead, so there momentum 0 is the value that
never updates.

A file records the last momentum configured, not necessarily the one training used: a momentum
set after ``compile()`` (from a callback, say) does not reach a train step already compiled, which
keeps the value it was traced with. A callback that sets momentum=1.0 after the first epoch to
"freeze" the statistics saves a file saying 1.0 while the statistics went on moving at 0.99. The
statistics in the file tell which: still at their initial values, they never moved; otherwise they
moved under some momentum. ``bncheck.keras.BatchNormGuard`` measures it during training.

Why it happens: momentum 1.0 written on purpose, as a way to freeze statistics; a value written
for another framework, or a typo.

How to fix: re-estimate the statistics from data, verified on held-out data: ``bncheck
recalibrate MODEL --data DATA --validate HELD_OUT -o FIXED`` (the CNN above: 10.6% to 99.0%).
Use a momentum in [0.9, 0.999] when training on; to freeze statistics use ``trainable=False``.
A layer reported here is not reported again by BN001. When the statistics did move (the momentum
was raised after training, or after compiling and never reached the train step, or they were
re-estimated since), inference uses them as they are and
the finding is information only: whether they fit is BN014's question, with data.

An ONNX graph's momentum of exactly 1.0 is not reported: an exported inference graph records
nothing about how training ran, and PyTorch's exporter writes ``1 - momentum``, so 1.0 for
``BatchNorm2d(momentum=None)``, the cumulative average, under which the statistics do change.
Whether they fit is BN014's question, with data; statistics still at their initial values are
BN001's.

Passing: momentum 0.99.
Failing: momentum 1.0.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck import verdict
from bncheck.findings import Escalation, Problem, Severity
from bncheck.model import BNLayer
from bncheck.rules._arrays import at_initial, untouched_while_trained

ID = "BN008"
NAME = "momentum-never-updates"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    kept = layer.keras_momentum
    if layer.momentum is None or kept is None or kept < 1.0:
        return
    if not verdict.layer_momentum_holds_statistics(layer) and kept == 1.0:
        return  # an ONNX graph's 1.0 says nothing about training (PyTorch's momentum=None)
    effect = "never change" if kept == 1.0 else "diverge"
    words = layer.vocabulary
    convention = ""
    if not words.momentum_keeps_history:
        convention = f" ({words.framework}: the weight of each new batch)"
    untouched = untouched_while_trained(layer)
    never_moved = bool(
        at_initial(layer, "moving_mean", 1e-6) and at_initial(layer, "moving_variance", 1e-6)
    )
    if untouched:
        state = (
            f"; they are still at their initial values ({layer.initial.moving_mean:g} and "
            f"{layer.initial.moving_variance:g}) while {' and '.join(untouched)} trained"
        )
    elif never_moved:
        state = (
            f"; they are at their initial values ({layer.initial.moving_mean:g} and "
            f"{layer.initial.moving_variance:g}) and training will not move them"
        )
    else:
        # Statistics that moved (set before the momentum froze them, or re-estimated since)
        # serve inference as they are: the momentum matters only to further training.
        state = (
            "; they hold values from before, which inference uses as they are (the file records "
            "the last momentum configured, not necessarily the one training used)"
        )
    yield Problem(
        message=words.translate(
            f"momentum={words.momentum(kept):g}{convention}: the moving statistics {effect} during "
            f"training{state}"
        ),
        layer=layer.path,
        details={"momentum": layer.momentum, "untouched": never_moved},
        escalation=None if never_moved else Escalation.MITIGATED,
    )
