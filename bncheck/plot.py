"""``bncheck plot``: one picture of every BatchNorm layer of a model, in depth order.

Panels share the x axis (BN layers as the model orders them): the spread of moving_mean and of
moving_variance over each layer's channels, and the dead channels BN005 found. Layers with
findings are shaded by their worst severity across all panels and named with their rules;
findings about the model as a whole are listed under the title. Probe measurements, given as a
``ProbeOverlay``, add a staleness panel and mark the layer where inference collapses.

The picture judges nothing itself: which layers are flagged, dead or collapsing comes from the
findings, so the configuration that shapes the report (ignored rules, severities, per-layer
ignores) shapes the picture the same way. Measurements are drawn as measured.

matplotlib is imported inside ``plot_model`` only: nothing else in bncheck needs it.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from bncheck import verdict
from bncheck.findings import Finding, ModelResult, Severity
from bncheck.model import BNLayer
from bncheck.records import record
from bncheck.rules import bn005_dead_channels, bn013_inference_collapse
from bncheck.text import shown

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SEVERITY_COLORS = {Severity.ERROR: "#d62728", Severity.WARNING: "#ff7f0e", Severity.INFO: "#1f77b4"}
BAND_COLOR = "#35978f"
RANGE_COLOR = "#80cdc1"
MEDIAN_COLOR = "#01403a"
DEAD_COLOR = "#525252"
PROBE_COLOR = "#6a3d9a"
#: Up to this many layers every layer is named on the x axis; beyond, only flagged ones.
NAMED_LAYERS = 40
#: Beyond this many flagged layers, names would be unreadable: the shading alone shows them.
NAMED_FLAGGED = 60


@record
class ProbeOverlay:
    """Per-layer measurements of a probe run, drawn over the static panels."""

    staleness: Mapping[str, float]
    """Each layer's staleness on real data as a multiple of BN014's threshold: the larger of its
    mean shift over ``max_mean_shift`` and its log variance factor over ``log
    max_variance_factor``, so 1 is where BN014 starts reporting; layers without a measurement
    are left out."""
    collapse_layer: str | None = None
    """Path of the first layer from which inference-mode activations stop varying across the
    batch, as BN013 found it; ``None`` when it found none."""


@record
class Spread:
    """Percentiles of one array over a layer's channels (finite values only)."""

    low: float
    """Smallest value."""
    q05: float
    """5th percentile."""
    median: float
    q95: float
    """95th percentile."""
    high: float
    """Largest value."""

    @classmethod
    def of(cls, array: np.ndarray) -> Spread | None:
        values = np.asarray(array, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return None
        low, q05, median, q95, high = np.percentile(values, [0, 5, 50, 95, 100])
        return cls(float(low), float(q05), float(median), float(q95), float(high))


def probe_overlay(
    result: ModelResult, max_mean_shift: float, max_variance_factor: float
) -> ProbeOverlay | None:
    """What a probe run adds to the picture: each layer's staleness on real data (synthetic data
    cannot measure it) relative to BN014's thresholds, and the layer where an inference collapse
    starts (BN013's finding)."""
    probe = result.probe
    if probe is None or not probe.ran:
        return None
    staleness = {}
    if probe.real_data:
        for layer in probe.layers:
            figures = verdict.judged_staleness(layer)
            if figures is not None:
                staleness[layer.path] = max(
                    figures.mean_shift / max_mean_shift,
                    float(np.log(figures.variance_factor) / np.log(max_variance_factor)),
                )
    collapse = next(
        (
            str(finding.details["first_layer"])
            for finding in result.findings
            if finding.rule == bn013_inference_collapse.ID and "first_layer" in finding.details
        ),
        None,
    )
    return ProbeOverlay(staleness, collapse)


def plot_model(result: ModelResult, target: str, overlay: ProbeOverlay | None = None) -> None:
    """Draw the BN layers of a readable model into ``target`` (.png or .svg, by suffix)."""
    import matplotlib
    from matplotlib.figure import Figure

    assert result.description is not None, "only a readable model can be plotted"
    layers = result.description.layers
    # Staleness needs real data; a probe on synthetic data still marks where a collapse starts.
    staleness = overlay is not None and bool(overlay.staleness)
    panels = 4 if staleness else 3
    width = min(18.0, max(9.0, 4 + 0.1 * len(layers)))
    figure = Figure(figsize=(width, 2.1 * panels + 2.2), layout="constrained")
    axes = list(figure.subplots(panels, 1, sharex=True, squeeze=False)[:, 0])
    # About 12 characters of 10-point text per inch: long paths and findings wrap, not cut off.
    title = "\n".join(
        wrapped
        for line in [_title(result), *_model_findings(result.findings)]
        for wrapped in textwrap.wrap(line, int(width * 12), subsequent_indent="    ")
    )
    figure.suptitle(title, fontsize=10, x=0.01, horizontalalignment="left")
    if layers:
        flagged = _flagged(layers, result.findings)
        x = np.arange(len(layers))
        _spread_panel(axes[0], x, [Spread.of(layer.moving_mean) for layer in layers])
        axes[0].axhline(0.0, color="0.55", linewidth=0.7, zorder=1)
        axes[0].set_ylabel("moving_mean")
        _spread_panel(axes[1], x, [Spread.of(_positive(layer)) for layer in layers], log=True)
        axes[1].set_ylabel("moving_variance\n(positive channels)")
        _dead_panel(axes[2], x, layers, result.findings)
        collapse = _index_of(layers, overlay.collapse_layer if overlay else None)
        if overlay is not None and staleness:
            _staleness_panel(axes[3], x, layers, overlay)
        if collapse is not None:
            _mark_collapse(axes, collapse)
        for ax in axes:
            _shade(ax, flagged)
            ax.grid(axis="y", color="0.9", linewidth=0.6)
            ax.set_axisbelow(True)
            ax.set_xlim(-0.6, len(layers) - 0.4)
        _x_labels(axes[-1], layers, flagged, also=() if collapse is None else (collapse,))
        _legend(figure, flagged)
    else:
        for ax in axes:
            ax.set_axis_off()
        missing = "no BatchNorm layer has moving statistics to draw"
        empty = missing if result.description.layer_count else "no BatchNorm layers"
        axes[0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=12)
    # SVG keeps its text as text: searchable, selectable, and smaller than outlined glyphs.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        figure.savefig(target, dpi=110)


def _title(result: ModelResult) -> str:
    assert result.description is not None
    counts = ", ".join(
        _count(sum(1 for f in result.findings if f.severity == s), str(s))
        for s in (Severity.ERROR, Severity.WARNING, Severity.INFO)
    )
    # Layers without moving statistics (a checkpoint that lost them) count, as in the report.
    layers = _count(result.description.layer_count, "BatchNorm layer")
    return f"{_label(result.path)} ({result.format}): {layers}; {counts}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _spread_panel(
    ax: Axes, x: np.ndarray, spreads: Sequence[Spread | None], log: bool = False
) -> None:
    """Per layer: the full range over channels (thin), 5-95% (box), the median (dot)."""
    nan = [np.nan] * 5
    rows = np.array([[s.low, s.q05, s.median, s.q95, s.high] if s else nan for s in spreads])
    ax.vlines(x, rows[:, 0], rows[:, 4], color=RANGE_COLOR, linewidth=1.2, zorder=2)
    ax.bar(
        x,
        rows[:, 3] - rows[:, 1],
        bottom=rows[:, 1],
        width=_bar_width(x),
        color=BAND_COLOR,
        zorder=3,
    )
    size = 4.5 if len(x) <= NAMED_LAYERS else 2.5
    ax.plot(x, rows[:, 2], "o", color=MEDIAN_COLOR, markersize=size, zorder=4)
    if log and np.isfinite(rows).any():
        # Bars do not take part in autoscaling on a logarithmic axis: fit the data explicitly.
        ax.set_yscale("log")
        ax.set_ylim(np.nanmin(rows[:, 0]) / 1.5, np.nanmax(rows[:, 4]) * 1.5)


def _bar_width(x: np.ndarray) -> float:
    """Narrow boxes when there are few layers, so that a box does not read as a bar chart."""
    return 0.6 if len(x) >= 12 else 0.3


def _positive(layer: BNLayer) -> np.ndarray:
    """The moving variances a logarithmic axis can show: zero ones are BN005's to report,
    negative ones BN004's."""
    variance = np.asarray(layer.moving_variance, dtype=np.float64).ravel()
    return variance[variance >= np.finfo(np.float64).tiny]


def _dead_panel(
    ax: Axes, x: np.ndarray, layers: Sequence[BNLayer], findings: Sequence[Finding]
) -> None:
    """The share of each layer's channels BN005 found dead."""
    dead = {
        finding.layer: float(finding.details["fraction"])
        for finding in findings
        if finding.rule == bn005_dead_channels.ID
    }
    fractions = np.array([dead.get(layer.path, 0.0) for layer in layers])
    ax.bar(x, 100 * fractions, width=_bar_width(x), color=DEAD_COLOR, zorder=3)
    ax.set_ylim(0, 100)
    ax.set_ylabel("dead channels (%)\n(BN005)")


def _staleness_panel(
    ax: Axes, x: np.ndarray, layers: Sequence[BNLayer], overlay: ProbeOverlay
) -> None:
    values = np.array([overlay.staleness.get(layer.path, np.nan) for layer in layers])
    ax.plot(x, values, "o-", color=PROBE_COLOR, markersize=3.5, linewidth=1.2, zorder=3)
    ax.axhline(1.0, color=PROBE_COLOR, linestyle=":", linewidth=1.0, zorder=2)
    ax.annotate(
        "BN014 threshold",
        (0.0, 1.0),
        xycoords=("axes fraction", "data"),
        xytext=(3, 2),
        textcoords="offset points",
        fontsize=7,
        color=PROBE_COLOR,
    )
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    ax.set_ylim(0.0, max(1.5, 1.1 * float(top)))
    ax.set_ylabel("staleness\n(x BN014 threshold)")


def _index_of(layers: Sequence[BNLayer], path: str | None) -> int | None:
    paths = [layer.path for layer in layers]
    return paths.index(path) if path in paths else None


def _mark_collapse(axes: Sequence[Axes], at: int) -> None:
    for ax in axes:
        ax.axvline(at, color="black", linestyle="--", linewidth=1.2, zorder=5)
    axes[0].annotate(
        " inference collapses from here",
        (at, 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(2, -12),
        textcoords="offset points",
        fontsize=8,
    )


def _flagged(layers: Sequence[BNLayer], findings: Sequence[Finding]) -> dict[int, list[Finding]]:
    """Findings by layer index, for the layers that have any."""
    index = {layer.path: i for i, layer in enumerate(layers)}
    flagged: dict[int, list[Finding]] = {}
    for finding in findings:
        if finding.layer in index:
            flagged.setdefault(index[finding.layer], []).append(finding)
    return flagged


def _worst(found: Sequence[Finding]) -> Severity:
    return max(f.severity for f in found)


def _shade(ax: Axes, flagged: Mapping[int, list[Finding]]) -> None:
    # Gaps between neighbours, so that adjacent flagged layers stay distinct columns.
    for i, found in flagged.items():
        ax.axvspan(i - 0.42, i + 0.42, color=SEVERITY_COLORS[_worst(found)], alpha=0.16, lw=0)


def _model_findings(findings: Sequence[Finding]) -> list[str]:
    """Findings about the model as a whole (no layer to shade), for under the title."""
    listed = [f for f in findings if f.layer is None]
    lines = [f"{f.severity} {f.rule} {f.name}: {_label(_shorten(f.message))}" for f in listed[:4]]
    if len(listed) > 4:
        lines.append(f"... and {len(listed) - 4} more")
    return lines


def _label(text: str) -> str:
    """Text from the file, for the picture: control characters as escapes, and no ``$`` that
    would make matplotlib parse the rest as mathematics."""
    return shown(text).replace("$", r"\$")


def _shorten(text: str, limit: int = 150) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _x_labels(
    ax: Axes,
    layers: Sequence[BNLayer],
    flagged: Mapping[int, list[Finding]],
    also: Sequence[int],
) -> None:
    """Layer paths below the common prefix, flagged ones coloured and followed by their rules:
    every layer when there are few, otherwise the flagged ones and those in ``also``."""
    prefix = _common_prefix([layer.path for layer in layers])
    if len(layers) <= NAMED_LAYERS:
        named = list(range(len(layers)))
    elif len(flagged) <= NAMED_FLAGGED:
        named = sorted({*flagged, *also})
    else:
        named = sorted(also)
    where = f" (paths below {_label(prefix)}/)" if prefix else ""
    ax.set_xlabel(f"BatchNorm layers in depth order{where}", fontsize=9)
    if not named:
        return
    labels = []
    for i in named:
        label = _label(layers[i].path[len(prefix) + 1 if prefix else 0 :])
        if i in flagged:
            label += "  " + ",".join(dict.fromkeys(f.rule for f in flagged[i]))
        labels.append(label)
    ax.set_xticks(named, labels, rotation=90, fontsize=7)
    for tick, i in zip(ax.get_xticklabels(), named, strict=True):
        if i in flagged:
            tick.set_color(SEVERITY_COLORS[_worst(flagged[i])])


def _common_prefix(paths: Sequence[str]) -> str:
    """The leading path elements every layer shares (the outermost model), if any remain."""
    parts = [path.split("/")[:-1] for path in paths]
    common = os.path.commonprefix(parts) if parts else []
    return "/".join(common)


def _legend(figure: Figure, flagged: Mapping[int, list[Finding]]) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(color=BAND_COLOR, label="5-95% of channels"),
        Line2D([], [], color=RANGE_COLOR, linewidth=2, label="min-max"),
        Line2D([], [], color=MEDIAN_COLOR, marker="o", linestyle="none", label="median"),
    ]
    severities = sorted({_worst(found) for found in flagged.values()}, reverse=True)
    handles += [
        Patch(color=SEVERITY_COLORS[s], alpha=0.35, label=f"layer with {s}") for s in severities
    ]
    figure.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False
    )
