"""A BatchNorm layer's moving statistics are missing from the checkpoint.

The checkpoint holds the layer's gamma or beta (or one of its moving statistics) but not both
moving_mean and moving_variance. Restoring it leaves the missing statistics at their initial values
(mean 0, variance 1), so the restored model normalises with numbers that describe no real
activations, and its predictions are wrong, often identical for every input. Nothing warns you:
restoring a checkpoint that lacks a variable is not an error in TF1, and a TF2 restore only
complains if you ask it to (``assert_consumed``).

Why it happens: the classic TF1 pitfall ``tf.train.Saver(tf.trainable_variables())``: moving_mean
and moving_variance are not trainable, so they are not saved. The same happens with a hand-made
variable list (``var_list=[...]``) or ``tf.train.Checkpoint(vars=model.trainable_variables)``.

How to fix: save every variable: ``tf.compat.v1.train.Saver()`` (its default is all global
variables) or ``Saver(tf.global_variables())``; in TF2 ``tf.train.Checkpoint(model=model)`` saves
everything the model tracks. For a checkpoint you cannot re-save, re-estimate the statistics from
data after restoring.

With ``--model``, groups matched to a model layer are judged by BN012 instead, so that each missing
statistic is reported once.

Passing: ``conv1/BatchNorm/{beta, moving_mean, moving_variance}`` saved by ``Saver()``.
Failing: only ``conv1/BatchNorm/beta`` saved by ``Saver(tf.trainable_variables())``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import CheckpointContents

ID = "BN011"
NAME = "checkpoint-missing-moving-stats"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "checkpoint"
OPTIONS: Mapping[str, float] = {}


def check(contents: CheckpointContents, options: Mapping[str, float]) -> Iterator[Problem]:
    matched = contents.matched_groups
    for group in contents.groups:
        missing = group.missing_moving_stats
        if not missing or group.path in matched:
            continue
        present = list(group.keys)
        yield Problem(
            message=(
                f"the checkpoint has {' and '.join(present)} but no {' or '.join(missing)}: "
                "a restored model normalises with the initial statistics (mean 0, variance 1); "
                "save all variables, not only the trainable ones"
            ),
            layer=group.path,
            details={
                "present": present,
                "missing": list(missing),
                "keys": dict(group.keys),
                "found_by": group.found_by,
            },
        )
