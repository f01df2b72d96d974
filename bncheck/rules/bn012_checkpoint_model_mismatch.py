"""A BatchNorm layer of the model cannot be restored completely from the checkpoint.

Given with ``--model``, each BatchNorm layer of the model is matched to the checkpoint's variables
(by path, then by name, then by position; the match says which). This rule flags a layer that
matches nothing, whose match lacks moving_mean or moving_variance, or whose match holds arrays of
another size than the layer's channel count. Restoring then leaves the layer at its initial
statistics, fails, or (with a position match) loads another layer's statistics.

Why it happens: the checkpoint was saved without the moving statistics (see BN011); the model was
changed after the checkpoint was written (a layer added, renamed or resized); or the checkpoint
belongs to another model.

How to fix: restore from a checkpoint written by this model with all its variables; after
changing a model, re-train or re-save. When names differ only by a scope prefix, rename the layers
or map the variables explicitly when restoring (``Saver(var_list={name: variable})``).

Passing: every layer matched, with moving_mean and moving_variance of the layer's channel count.
Failing: ``cnn/head_bn`` added after the checkpoint was saved (no match); ``cnn/bn2`` widened from
16 to 32 channels (shape mismatch).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import CheckpointContents

ID = "BN012"
NAME = "checkpoint-model-mismatch"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "checkpoint"
OPTIONS: Mapping[str, float] = {}


def check(contents: CheckpointContents, options: Mapping[str, float]) -> Iterator[Problem]:
    for match in contents.matches:
        group = match.group
        if group is None:
            yield Problem(
                message=(
                    "no BatchNorm variables in the checkpoint match this layer (by path, name or "
                    "position): restoring leaves its moving statistics at their initial values"
                ),
                layer=match.layer,
                details={"channels": match.channels},
            )
            continue
        where = {"group": group.path, "matched_by": match.matched_by, "keys": dict(group.keys)}
        missing = group.missing_moving_stats
        if missing:
            yield Problem(
                message=(
                    f"its checkpoint variables {group.path} (matched by {match.matched_by}) have "
                    f"no {' or '.join(missing)}: restoring leaves them at their initial values"
                ),
                layer=match.layer,
                details={**where, "missing": list(missing)},
            )
        mismatched = match.shape_mismatches
        if mismatched:
            described = ", ".join(f"{name} {list(shape)}" for name, shape in mismatched.items())
            yield Problem(
                message=(
                    f"its checkpoint variables {group.path} (matched by {match.matched_by}) do "
                    f"not fit its {match.channels} channels: {described}"
                ),
                layer=match.layer,
                details={
                    **where,
                    "channels": match.channels,
                    "shapes": {name: list(shape) for name, shape in mismatched.items()},
                },
            )
