"""The human-readable report: a table of BN layers per model, the findings, a verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from tabulate import tabulate

from bncheck.findings import ModelResult, Report, Severity
from bncheck.model import ArraySummary, BNLayer, CheckpointContents
from bncheck.reporters.options import PLAIN, RenderOptions

if TYPE_CHECKING:
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


#: Terminal colour and boldness of each severity and verdict, when colour is on.
_STYLE: dict[str, tuple[str, bool]] = {
    "error": ("red", True),
    "warning": ("yellow", False),
    "info": ("cyan", False),
    "OK": ("green", True),
    "FAIL": ("red", True),
    "ERROR": ("red", True),
}


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    blocks = [_model_block(model, options) for model in report.models]
    return "\n\n".join(blocks + [verdict(report, options)]) + "\n"


def _model_block(model: ModelResult, options: RenderOptions) -> str:
    if model.error is not None:
        return f"{model.path}: {_paint('error', options)}: {model.error}"
    description = model.description
    assert description is not None  # a result without error has a description
    lines = [
        f"{model.path} ({description.format}): {_count(len(description.layers), 'BatchNorm layer')}"
    ]
    lines += [f"  note: {note}" for note in description.notes]
    if description.layers:
        rows = [_row(layer) for layer in description.layers]
        lines.append(tabulate(rows, headers=_HEADERS, tablefmt="simple", disable_numparse=True))
    contents = description.checkpoint
    if contents is not None:
        if contents.matches:
            lines.append(_matches_table(contents))
        lines.append(coverage_line(contents, description.format))
    if model.probe is not None:
        lines += probe_lines(model.probe)
    if model.findings:
        ordered = sorted(model.findings, key=lambda f: -f.severity)
        lines.append("")
        lines += [
            f"{_severity(f.severity, options)} {f.rule} {f.name}  {f.layer or '(model)'}: "
            f"{f.message}"
            for f in ordered
        ]
    return "\n".join(lines)


def coverage_line(contents: CheckpointContents, format_name: str) -> str:
    coverage = contents.coverage
    where = "the SavedModel" if format_name == "savedmodel" else "the checkpoint"
    layers = "BN layer" if coverage.bn_layers == 1 else "BN layers"
    of_model = " of the model" if contents.model is not None else ""
    verb = "has" if coverage.bn_layers == 1 else "have"
    return (
        f"{coverage.with_moving_stats}/{coverage.bn_layers} {layers}{of_model} {verb} "
        f"moving statistics in {where}"
    )


def _matches_table(contents: CheckpointContents) -> str:
    rows = []
    for match in contents.matches:
        group = match.group
        if group is None:
            rows.append([match.layer, str(match.channels), "-", "no match", "-"])
            continue
        problems = [f"no {name}" for name in group.missing_moving_stats]
        mismatched = match.shape_mismatches
        if mismatched:
            shapes = ", ".join(f"{name} {list(shape)}" for name, shape in mismatched.items())
            problems.append(f"shape mismatch: {shapes}")
        status = ", ".join(problems) or "ok"
        rows.append([match.layer, str(match.channels), group.path, match.matched_by or "", status])
    headers = ["model layer", "ch", "checkpoint variables", "matched by", "restores"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


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


def _severity(severity: Severity, options: RenderOptions) -> str:
    """The severity word padded to a column; the padding stays outside the colour."""
    word = str(severity)
    return _paint(word, options) + " " * (8 - len(word))


def _paint(word: str, options: RenderOptions) -> str:
    if not options.color:
        return word
    color, bold = _STYLE[word]
    return click.style(word, fg=color, bold=bold or None)


def verdict(report: Report, options: RenderOptions = PLAIN) -> str:
    unreadable = sum(1 for model in report.models if model.error is not None)
    counts = ", ".join(
        _count(report.count(severity), str(severity))
        for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO)
    )
    scope = (
        f"{_count(len(report.models), 'model')}, {_count(report.layer_count, 'BatchNorm layer')}"
    )
    if unreadable:
        status = f"{_paint('ERROR', options)}: {_count(unreadable, 'input')} could not be read"
    elif report.failing():
        status = _paint("FAIL", options)
    else:
        status = _paint("OK", options)
    return f"{status}: {counts} in {scope} (fail-on: {report.fail_on.value})"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"
