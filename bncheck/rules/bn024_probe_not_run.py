"""The probe was asked for and did not run: the file needs an option to run.

A weights-only Keras file (a ``.weights.h5`` written by ``ModelCheckpoint(save_weights_only=True)``
or ``model.save_weights``, a legacy ``save_weights`` ``.h5``, sharded ``.weights.json``) holds no
architecture, so ``--probe`` or ``--data`` cannot run it by itself. The check that was asked for
did not happen, so a CI gate must not pass as if it had: a file whose statistics are stale would
go through (a checkpoint scoring 12.9% held-out exited 0 with "probe: skipped").

Files that no option lets bncheck run (a TensorFlow checkpoint, a safetensors file, a state dict)
are not reported here: their probe is skipped with the reason, and the static checks stand. A
file the probe refused for the code it holds is BN017's.

How to fix: pass ``--architecture MODEL``, the ``.keras`` or full ``.h5`` file of the same
network (for instance the model saved before training), into which the weights are loaded to run
them; or inspect the ``.keras`` model itself.

Passing: ``bncheck inspect ckpt.weights.h5 --architecture model.keras --data held_out.npz``.
Failing: ``bncheck inspect ckpt.weights.h5 --data held_out.npz``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck.findings import Problem, Severity

if TYPE_CHECKING:
    from bncheck.probe.results import ProbeResult

ID = "BN024"
NAME = "probe-not-run"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {}


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    if result.ran or result.needs is None or result.content:
        return
    yield Problem(
        message=f"the probe was asked for and did not run: {result.skipped}",
        details={"needs": result.needs},
    )
