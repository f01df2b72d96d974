"""The human-readable report: a table of BN layers per model, the findings, a verdict."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import click
from tabulate import tabulate

from bncheck.findings import Finding, ModelResult, Report, Severity
from bncheck.model import ArraySummary, BNLayer, CheckpointContents
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.text import shown

if TYPE_CHECKING:
    from bncheck.probe.results import Metric, OutputMeasurement, ProbeData, ProbeResult

_HEADERS = ["layer", "class", "ch", "momentum", "epsilon", "trainable"]
#: The array columns, by bncheck's names; each model's table heads them in its framework's words.
_ARRAY_COLUMNS = ("moving_mean", "moving_variance", "gamma", "beta")


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
    """Each readable model's block, then the verdict. An unreadable input has its one line on
    standard error (``app.finish``), not here; when no input could be read, there is nothing
    more to say. A model read whose probe failed keeps its block, the error in it."""
    blocks = [
        _model_block(model, options) for model in report.models if model.description is not None
    ]
    if not blocks:
        return ""
    return "\n\n".join(blocks + [verdict(report, options)]) + "\n"


def _model_block(model: ModelResult, options: RenderOptions) -> str:
    description = model.description
    assert description is not None  # a result without error has a description
    lines = [
        f"{shown(model.path)} ({description.format}): "
        f"{_count(description.layer_count, 'BatchNorm layer')}"
    ]
    if model.error is not None:  # drawn with its description: its probe failed
        lines.append(f"  error: {shown(model.error)}")
    lines += [f"  note: {shown(note)}" for note in description.notes]
    if description.layers:
        rows = [_row(layer) for layer in description.layers]
        words = description.vocabulary
        headers = [*_HEADERS, *(words.array(name) for name in _ARRAY_COLUMNS)]
        lines.append(tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True))
    contents = description.checkpoint
    if contents is not None:
        if contents.matches:
            lines.append(_matches_table(contents))
        lines.append(coverage_line(contents, description.format))
    if model.probe is not None:
        lines += probe_lines(model.probe)
    if model.findings:
        lines.append("")
        lines += [_finding_line(group, options) for group in grouped(model.findings)]
    return "\n".join(lines)


#: Layers a grouped finding names before it abbreviates.
NAMED_LAYERS = 3


def grouped(findings: Sequence[Finding]) -> list[list[Finding]]:
    """The findings, worst first, with those identical but for their layer (an untrained model's
    BN002 on every layer) in one group, in the order of their first layer."""
    groups: dict[tuple[object, ...], list[Finding]] = {}
    for finding in sorted(findings, key=lambda f: -f.severity):
        key: tuple[object, ...] = (finding.severity, finding.rule, finding.message)
        if finding.layer is None:
            key += (id(finding),)
        groups.setdefault(key, []).append(finding)
    return list(groups.values())


#: Where a finding's text starts, after its severity column; its wrapped lines start there too,
#: so that the severities stay alone in their column.
CONTINUATION = " " * 9

#: The fewest columns a finding's text wraps to, however narrow the terminal.
_NARROWEST_TEXT = 30


def _finding_line(group: list[Finding], options: RenderOptions) -> str:
    """The severity, rule, layers and message, wrapped to ``options.width`` with each following
    line indented by ``CONTINUATION``. Lines break only at spaces: a name longer than a line
    keeps its own line whole, and joining the lines with single spaces gives the text back."""
    first = group[0]
    if len(group) == 1:
        where = shown(first.layer or "(model)")
    else:
        named = ", ".join(shown(f.layer or "") for f in group[:NAMED_LAYERS])
        more = f" and {len(group) - NAMED_LAYERS} more" if len(group) > NAMED_LAYERS else ""
        where = f"{len(group)} layers ({named}{more})"
    text = f"{first.rule} {first.name}  {where}: {shown(first.message)}"
    lines = textwrap.wrap(
        text,
        width=max(options.width - len(CONTINUATION), _NARROWEST_TEXT),
        break_long_words=False,
        break_on_hyphens=False,
    )
    # A line of its own could start with text from a file: escaped again at its new start, so
    # that a name cannot begin a CI log line as a workflow command (``::error::``).
    head = f"{_severity(first.severity, options)} {lines[0]}"
    return "\n".join([head, *(CONTINUATION + shown(line) for line in lines[1:])])


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
    """Which checkpoint variables each model layer found, and what they hold: facts only, for the
    findings (BN012, BN020) to judge."""
    rows = []
    for match in contents.matches:
        group = match.group
        if group is None:
            rows.append([shown(match.layer), str(match.channels), "-", "-", "-"])
            continue
        rows.append(
            [
                shown(match.layer),
                str(match.channels),
                shown(group.path),
                match.matched_by or "",
                shown(_arrays(group.shapes)),
            ]
        )
    headers = ["model layer", "ch", "checkpoint variables", "matched by", "arrays [shape]"]
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True)


def _arrays(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """``gamma, beta, moving_mean, moving_variance [8]`` when they share a shape."""
    if len(set(shapes.values())) == 1:
        [shape] = set(shapes.values())
        return f"{', '.join(shapes)} {list(shape)}"
    return ", ".join(f"{name} {list(shape)}" for name, shape in shapes.items())


def probe_lines(probe: ProbeResult) -> list[str]:
    """The probe's data, modes and output figures, or why it was skipped."""
    if probe.skipped is not None:
        return [f"  probe: skipped: {shown(probe.skipped)}"]
    lines = []
    data = probe.data
    if data is not None:
        lines.append(
            f"  probe: {data_line(data)}; {' and '.join(probe.modes)} mode, loaded by "
            f"{probe.loader}{' (--unsafe)' if probe.unsafe else ''}"
        )
    for output in probe.outputs:
        lines.append(f"  probe: output {_output_figures(output)}")
        if output.metric is not None:
            lines.append(f"  probe: output {output.name!r}: {metric_line(output.metric)}")
    lines += [f"  probe note: {shown(note)}" for note in probe.notes]
    return lines


def data_line(data: ProbeData) -> str:
    """``real data (x.npz, labelled), 2048 of 5000 samples in 64 batches of 32``."""
    kind = "real data" if data.real else "synthetic data"
    labelled = ", labelled" if data.labelled else ""
    of = (
        f" of {data.available}"
        if data.available is not None and data.available > data.samples
        else ""
    )
    batches = f" in {_count(data.batches, 'batch')} of {data.batch_size}" if data.real else ""
    return f"{kind} ({shown(data.source)}{labelled}), {data.samples}{of} samples{batches}"


def metric_line(metric: Metric) -> str:
    """The metric with the stored statistics, re-estimated ones and in training mode."""
    parts = [f"{metric.format(metric.stored)} with the stored statistics"]
    if metric.reestimated is not None:
        parts.append(f"{metric.format(metric.reestimated)} re-estimated")
    if metric.training is not None:
        parts.append(f"{metric.format(metric.training)} in training mode")
    return f"{metric.name} " + ", ".join(parts)


def _output_figures(output: OutputMeasurement) -> str:
    parts = [f"spread {output.inference_spread:.3g} inference"]
    if output.training_spread is not None:
        parts[0] += f" / {output.training_spread:.3g} training"
    if output.reestimated_top1_agreement is not None:
        changed = 1 - output.reestimated_top1_agreement
        parts.append(f"re-estimated statistics change {changed:.1%} of top-1 classes")
    elif output.reestimated_relative_error is not None:
        parts.append(
            f"re-estimated statistics change it by {output.reestimated_relative_error:.3g}"
        )
    if output.batch_dependence is not None:
        parts.append(f"batch dependence {output.batch_dependence:.3g}")
    return f"{output.name!r}: " + ", ".join(parts)


def _row(layer: BNLayer) -> list[str]:
    return [
        shown(layer.path),
        shown(_class_label(layer)),
        str(layer.channels),
        _number(_momentum(layer)),
        _number(layer.epsilon),
        {True: "yes", False: "no", None: "?"}[layer.trainable],
        *(_stats(layer.summaries[name]) for name in _ARRAY_COLUMNS),
    ]


def _momentum(layer: BNLayer) -> float | None:
    """The layer's momentum in the convention of the words its model is reported in."""
    kept = layer.keras_momentum
    return None if kept is None else layer.vocabulary.momentum(kept)


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
    """One line: the outcome (how many inputs could not be read or probed, if any), the findings
    by severity, and how many models (inputs that could be read) and BatchNorm layers they came
    from."""
    inputs = _count(len(report.models), "input")
    failed = {"read": report.unreadable_count, "probed": report.probe_failed_count}
    failures = [f"{n} of {inputs} could not be {what}" for what, n in failed.items() if n]
    counts = ", ".join(
        _count(report.count(severity), str(severity))
        for severity in (Severity.ERROR, Severity.WARNING, Severity.INFO)
    )
    scope = (
        f"{_count(report.model_count, 'model')}, {_count(report.layer_count, 'BatchNorm layer')}"
    )
    if failures:
        status = f"{_paint('ERROR', options)}: {'; '.join(failures)}"
    elif report.failing():
        status = _paint("FAIL", options)
    else:
        status = _paint("OK", options)
    return f"{status}: {counts} in {scope} (fail-on: {report.fail_on.value})"


def _count(number: int, noun: str) -> str:
    plural = "es" if noun.endswith(("ch", "sh", "s", "x")) else "s"
    return f"{number} {noun}{'' if number == 1 else plural}"
