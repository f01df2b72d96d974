"""The text ``bncheck recalibrate`` prints: what moved, the verdict before and after, and the
usual report of the repaired model."""

from __future__ import annotations

from tabulate import tabulate

from bncheck.findings import Severity
from bncheck.recalibrate.results import LayerChange, Recalibration, Verdict
from bncheck.reporters import table

_HEADERS = ["layer", "status", "mean moved (sd)", "variance new/old"]


def render(result: Recalibration) -> str:
    head = (
        f"recalibrated {result.model} -> {result.output}: {result.samples} samples in "
        f"{result.batches} batch{'es' if result.batches != 1 else ''} of {result.data}"
    )
    rows = [_row(change) for change in result.layers]
    changes = tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True)
    verdicts = "\n".join(
        [f"probe before: {verdict(result.before)}", f"probe after:  {verdict(result.after)}"]
    )
    return (
        "\n\n".join([head + "\n" + changes, verdicts, table.render(result.report).rstrip()]) + "\n"
    )


def _row(change: LayerChange) -> list[str]:
    if change.mean_shift is None:
        return [change.path, change.status, "-", "-"]
    return [
        change.path,
        change.status,
        f"{change.mean_shift:.3g} [max {change.max_mean_shift:.3g}]",
        f"{change.variance_ratio:.3g} [{change.min_variance_ratio:.3g}, "
        f"{change.max_variance_ratio:.3g}]",
    ]


def verdict(judged: Verdict) -> str:
    """Collapse, staleness, mode divergence and top-1 agreement, in one line."""
    rules = [finding.rule for finding in judged.findings]
    staleness = [f.severity for f in judged.findings if f.rule == "BN014"]
    stale = sum(1 for severity in staleness if severity > Severity.INFO)
    frozen = len(staleness) - stale
    parts = [
        "inference collapse" if "BN013" in rules else "no collapse",
        f"{stale} stale layer{'s' if stale != 1 else ''}" if stale else "no stale layers",
    ]
    if frozen:
        parts[-1] += f" ({frozen} frozen one{'s' if frozen != 1 else ''} differ, kept on purpose)"
    output = judged.probe.outputs[0] if judged.probe.outputs else None
    if output is not None and output.relative_error is not None:
        divergence = "mode divergence" if "BN015" in rules else "no mode divergence"
        parts.append(f"{divergence} (relative error {output.relative_error:.3g})")
    if output is not None and output.top1_agreement is not None:
        samples = judged.probe.data.samples if judged.probe.data else 0
        parts.append(
            f"top-1 agreement inference/training {output.top1_agreement:.0%} on {samples} samples"
        )
    return ", ".join(parts)
