"""Some BatchNorm layers of the model found their checkpoint variables by position alone.

With ``--model``, each BatchNorm layer is matched to the checkpoint's variables by its path, then
by its name, and only then by position: once names are used up, the n-th unmatched layer takes
the n-th unmatched group, when both counts agree. That is the usual case for an object-based
checkpoint of a model whose layers were renamed, and restoring by position is what TensorFlow
does too. But nothing then shows that the checkpoint belongs to this model: if it does not, every
layer restores another layer's statistics, and shapes that happen to agree hide it.

How to fix: make sure the checkpoint was written by this model (same architecture, layers in the
same order); give the layers their saved names, or restore through the same object structure.
When you know the pairing is right, ignore the rule for this model.

Passing: every layer matched by path or name.
Failing: ``bn_a`` and ``bn_b`` renamed ``norm1`` and ``norm2`` after the checkpoint was written:
matched to ``bn_a`` and ``bn_b`` by position.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.matching import BY_POSITION
from bncheck.model import CheckpointContents

ID = "BN020"
NAME = "matched-by-position"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "checkpoint"
OPTIONS: Mapping[str, float] = {}


def check(contents: CheckpointContents, options: Mapping[str, float]) -> Iterator[Problem]:
    paired = {
        match.layer: match.group.path
        for match in contents.matches
        if match.matched_by == BY_POSITION and match.group is not None
    }
    if not paired:
        return
    shown = ", ".join(f"{layer} -> {group}" for layer, group in list(paired.items())[:3])
    more = f" and {len(paired) - 3} more" if len(paired) > 3 else ""
    yield Problem(
        message=(
            f"{len(paired)} of the model's {len(contents.matches)} BatchNorm layers matched "
            f"checkpoint variables by position only ({shown}{more}): their names differ, so make "
            "sure the checkpoint belongs to this model"
        ),
        details={"pairs": paired},
    )
