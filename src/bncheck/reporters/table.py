"""The human-readable report: a table of BN layers per model, the findings, a verdict."""

from __future__ import annotations

from tabulate import tabulate

from bncheck.findings import ModelResult, Report, Severity
from bncheck.model import ArraySummary, BNLayer
from bncheck.probe.results import OutputMeasurement, ProbeResult

_HEADERS = [
    "layer",
    "class",
    "ch",
    "momentum",
    "epsilon",
    "trainable",
    "moving_mean",
    "moving_variance",
    "gamma",
    "beta",
]


def render(report: Report) -> str:
    blocks = [_model_block(model) for model in report.models]
    return "\n\n".join(blocks + [verdict(report)]) + "\n"


def _model_block(model: ModelResult) -> str:
    if model.error is not None:
        return f"{model.path}: error: {model.error}"
    description = model.description
    assert description is not None  # a result without error has a description
    lines = [
        f"{model.path} ({description.format}): {_count(len(description.layers), 'BatchNorm layer')}"
    ]
    lines += [f"  note: {note}" for note in description.notes]
    if description.layers:
        rows = [_row(layer) for layer in description.layers]
        lines.append(tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True))
    if model.probe is not None:
        lines += probe_lines(model.probe)
    if model.findings:
        ordered = sorted(model.findings, key=lambda f: -f.severity)
        lines.append("")
        lines += [
            f"{str(f.severity):<8} {f.rule} {f.name}  {f.layer or '(model)'}: {f.message}"
            for f in ordered
        ]
    return "\n".join(lines)


def probe_lines(probe: ProbeResult) -> list[str]:
    """The probe's data, modes and output figures, or why it was skipped."""
    if probe.skipped is not None:
        return [f"  probe: skipped: {probe.skipped}"]
    lines = []
    data = probe.data
    if data is not None:
        kind = "real data" if data.real else "synthetic data"
        modes = " and ".join(probe.modes)
        lines.append(
            f"  probe: {kind} ({data.source}), {_count(data.samples, 'sample')}, {modes} mode, "
            f"loaded by {probe.loader}{' (--unsafe)' if probe.unsafe else ''}"
        )
    lines += [f"  probe: output {_output_figures(output)}" for output in probe.outputs]
    lines += [f"  probe note: {note}" for note in probe.notes]
    return lines


def _output_figures(output: OutputMeasurement) -> str:
    parts = [f"spread {output.inference_spread:.3g} inference"]
    if output.training_spread is not None:
        parts[0] += f" / {output.training_spread:.3g} training"
    if output.relative_error is not None:
        parts.append(f"relative error {output.relative_error:.3g}")
    if output.top1_agreement is not None:
        parts.append(f"top-1 agreement {output.top1_agreement:.0%}")
    if output.batch_dependence is not None:
        parts.append(f"batch dependence {output.batch_dependence:.3g}")
    return f"{output.name!r}: " + ", ".join(parts)


def _row(layer: BNLayer) -> list[str]:
    return [
        layer.path,
        _class_label(layer),
        str(layer.channels),
        _number(layer.momentum),
        _number(layer.epsilon),
        {True: "yes", False: "no", None: "?"}[layer.trainable],
        *(
            _stats(layer.summaries[name])
            for name in ("moving_mean", "moving_variance", "gamma", "beta")
        ),
    ]


def _class_label(layer: BNLayer) -> str:
    label = layer.class_name.replace("BatchNormalization", "BN")
    if layer.synchronized and "Sync" not in label:
        label += " sync"
    return label


def _number(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _stats(summary: ArraySummary | None) -> str:
    if summary is None:
        return "-"
    bad = f" ({summary.nonfinite} nan/inf)" if summary.nonfinite else ""
    if summary.mean is None:
        return f"all nan/inf{bad}"
    return f"{summary.mean:.3g} [{summary.min:.3g}, {summary.max:.3g}]{bad}"


def verdict(report: Report) -> str:
    unreadable = sum(1 for model in report.models if model.error is not None)
    counts = ", ".join(
        _count(report.count(severity), str(severity))
        for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO)
    )
    scope = (
        f"{_count(len(report.models), 'model')}, {_count(report.layer_count, 'BatchNorm layer')}"
    )
    if unreadable:
        status = f"ERROR: {_count(unreadable, 'input')} could not be read"
    elif report.failing():
        status = "FAIL"
    else:
        status = "OK"
    return f"{status}: {counts} in {scope} (fail-on: {report.fail_on.value})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
