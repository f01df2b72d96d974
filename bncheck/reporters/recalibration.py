"""The text ``bncheck recalibrate`` prints: what moved, what the verification measured, whether
the output was written, and the usual report of the written model. Nothing here judges: the
verification and the written model's findings come from the recalibration and the engine."""

from __future__ import annotations

from tabulate import tabulate

from bncheck.recalibrate.results import KEPT_BECAUSE, LayerChange, Recalibration, Verification
from bncheck.reporters import table
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.text import shown

_HEADERS = ["layer", "status", "mean moved (sd) [max]", "variance off by [worst old/new]"]


def render(result: Recalibration, options: RenderOptions = PLAIN) -> str:
    if result.verification is None:
        head = f"{shown(result.model)}: nothing recalibrated: {shown(result.refusal or '')}"
    else:
        # Whether the result is written is said below, after the verification.
        head = (
            f"re-estimated {shown(result.model)}: {result.samples} samples in {result.batches} "
            f"batch{'es' if result.batches != 1 else ''} of {shown(result.data)}"
        )
    rows = [_row(change) for change in result.layers]
    changes = tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True)
    statuses = dict.fromkeys(change.status for change in result.layers)
    reasons = [f"{status}: {KEPT_BECAUSE[status]}" for status in statuses if status in KEPT_BECAUSE]
    blocks = ["\n".join([head, changes, *reasons])]
    if result.verification is not None:
        blocks.append(_verified(result.verification) + "\n" + _outcome(result))
    report = result.report
    if report is not None:
        blocks.append(table.render(report, options).rstrip())
    return "\n\n".join(blocks) + "\n"


def _row(change: LayerChange) -> list[str]:
    if change.mean_shift is None or change.variance_factor is None:
        return [shown(change.path), change.status, "-", "-"]
    return [
        shown(change.path),
        change.status,
        f"{change.mean_shift:.3g} [{change.max_mean_shift:.3g}]",
        f"{change.variance_factor:.3g}x [{change.worst_variance_ratio:.3g}]",
    ]


def _verified(check: Verification) -> str:
    metric = check.metric
    if metric is not None and metric.reestimated is not None:
        interval = f" ({metric.describe_change()})" if metric.change is not None else ""
        return (
            f"verified on {shown(check.described)}: {metric.name} {metric.format(metric.stored)} "
            f"with the stored statistics, {metric.format(metric.reestimated)} with the new "
            f"ones{interval}"
        )
    if check.changed_predictions is not None:
        changed = f"the top-1 class of {check.changed_predictions:.1%} of the samples changes"
    else:
        changed = f"the outputs change by {check.relative_change:.3g} relative to their norm"
    return f"compared on {shown(check.described)}, without labels: {changed}"


def _outcome(result: Recalibration) -> str:
    if result.writer is not None:
        return f"not written here: {result.writer} writes {shown(str(result.output))}"
    if result.written_to is None:
        if result.refusal is None:
            return "nothing written (no output asked for)"
        return (
            f"not written: {shown(result.refusal)}; pass --force to write "
            f"{shown(str(result.output))} anyway"
        )
    forced = f" although {shown(result.refusal)} (--force)" if result.refusal is not None else ""
    check = result.verification
    if not forced and check is not None and check.metric is None:
        # Few changed predictions are no evidence that the new ones are right.
        forced = (
            ", unverified: without labels bncheck cannot tell whether it is better (--validate "
            "HELD_OUT with labels measures it)"
        )
    return f"wrote {shown(str(result.output))}{forced}"
