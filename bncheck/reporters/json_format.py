"""The JSON report. Field names and meanings are a stable contract; fields may be added."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from bncheck import __version__
from bncheck.findings import Finding, ModelResult, Report, Severity
from bncheck.model import (
    ARRAY_NAMES,
    ArraySummary,
    BNLayer,
    CheckpointContents,
    CheckpointGroup,
    Coverage,
)
from bncheck.reporters.options import PLAIN, RenderOptions

if TYPE_CHECKING:
    from bncheck.probe.results import LayerMeasurement, Metric, ProbeResult


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    return json.dumps(strict(as_dict(report)), indent=2, allow_nan=False) + "\n"


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "bncheck_version": __version__,
        "models": [_model(model) for model in report.models],
        "summary": {
            "inputs": len(report.models),
            "models": report.model_count,
            "layers": report.layer_count,
            "errors": report.count(Severity.ERROR),
            "warnings": report.count(Severity.WARNING),
            "infos": report.count(Severity.INFO),
            "unreadable": report.unreadable_count,
            "probe_failed": report.probe_failed_count,
        },
        "fail_on": report.fail_on.value,
        "exit_code": int(report.exit_code),
    }


def _model(model: ModelResult) -> dict[str, Any]:
    description = model.description
    contents = description.checkpoint if description else None
    return {
        "path": model.path,
        "format": model.format,
        "error": model.error,
        "notes": list(description.notes) if description else [],
        "layers": [_layer(layer) for layer in description.layers] if description else [],
        "findings": [finding_dict(finding) for finding in model.findings],
        "coverage": _coverage(contents.coverage) if contents else None,
        "checkpoint": _checkpoint(contents) if contents else None,
        "probe": None if model.probe is None else _probe(model.probe),
    }


def _coverage(coverage: Coverage) -> dict[str, int]:
    return {"bn_layers": coverage.bn_layers, "with_moving_stats": coverage.with_moving_stats}


def _checkpoint(contents: CheckpointContents) -> dict[str, Any]:
    return {
        "prefix": contents.prefix,
        "model": contents.model,
        "groups": [_group(group) for group in contents.groups],
        "matches": [
            {
                "layer": match.layer,
                "channels": match.channels,
                "group": match.group.path if match.group else None,
                "matched_by": match.matched_by,
            }
            for match in contents.matches
        ],
    }


def _group(group: CheckpointGroup) -> dict[str, Any]:
    return {
        "path": group.path,
        "aliases": list(group.aliases),
        "found_by": group.found_by,
        "keys": dict(group.keys),
        "shapes": {name: list(shape) for name, shape in group.shapes.items()},
        "missing": list(group.missing_moving_stats),
    }


def _probe(probe: ProbeResult) -> dict[str, Any]:
    data = probe.data
    return {
        "ran": probe.ran,
        "skipped": probe.skipped,
        "loader": probe.loader,
        "unsafe": probe.unsafe,
        "content": [
            {"kind": ref.kind, "where": ref.where, "detail": ref.detail} for ref in probe.content
        ],
        "data": None
        if data is None
        else {
            "real": data.real,
            "source": data.source,
            "samples": data.samples,
            "available": data.available,
            "batch_size": data.batch_size,
            "batches": data.batches,
            "labelled": data.labelled,
            "inputs": [{"name": name, "shape": list(shape)} for name, shape in data.inputs],
        },
        "modes": list(probe.modes),
        "outputs": [
            {
                "name": output.name,
                "inference_spread": output.inference_spread,
                "training_spread": output.training_spread,
                "inference_rms": output.inference_rms,
                "training_rms": output.training_rms,
                "inference_nonfinite": output.inference_nonfinite,
                "relative_error": output.relative_error,
                "top1_agreement": output.top1_agreement,
                "batch_dependence": output.batch_dependence,
                "reestimated_relative_error": output.reestimated_relative_error,
                "reestimated_top1_agreement": output.reestimated_top1_agreement,
                "metric": None if output.metric is None else _metric(output.metric),
            }
            for output in probe.outputs
        ],
        "layers": [
            {
                "path": layer.path,
                "calls": layer.calls,
                "trainable": layer.trainable,
                "inference_spread": layer.inference_spread,
                "training_spread": layer.training_spread,
                "inference_rms": layer.inference_rms,
                "training_rms": layer.training_rms,
                "inference_nonfinite": layer.inference_nonfinite,
                "moving_stats_error": layer.moving_stats_error,
                "reestimated": layer.reestimated,
                "untouched": layer.untouched,
                "population": None if layer.population is None else _population(layer),
            }
            for layer in probe.layers
        ],
        "notes": list(probe.notes),
    }


def _metric(metric: Metric) -> dict[str, Any]:
    return {
        "name": metric.name,
        "stored": metric.stored,
        "reestimated": metric.reestimated,
        "training_mode": metric.training,
    }


def _population(layer: LayerMeasurement) -> dict[str, Any]:
    """The population estimate, and how far the stored statistics are from it."""
    population = layer.population
    assert population is not None
    figures = layer.staleness()
    return {
        "batches": population.batches,
        "mean": population.mean.tolist(),
        "variance": population.variance.tolist(),
        "mean_error": population.mean_error.tolist(),
        "variance_error": population.variance_error.tolist(),
        "mean_shift": None if figures is None else figures.mean_shift,
        "variance_factor": None if figures is None else figures.variance_factor,
    }


def _layer(layer: BNLayer) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "path": layer.path,
        "name": layer.name,
        "class": layer.class_name,
        "channels": layer.channels,
        "axis": list(layer.axis) if layer.axis is not None else None,
        "momentum": layer.momentum,
        "epsilon": layer.epsilon,
        "center": layer.center,
        "scale": layer.scale,
        "trainable": layer.trainable,
        "synchronized": layer.synchronized,
    }
    for name in ARRAY_NAMES:
        entry[name] = _summary(layer.summaries[name])
    entry["source"] = layer.source
    entry["framework"] = layer.framework
    entry["num_batches_tracked"] = layer.num_batches_tracked
    entry["variance_estimator"] = layer.variance_estimator
    return entry


def _summary(summary: ArraySummary | None) -> dict[str, Any] | None:
    if summary is None:
        return None
    return {
        "min": summary.min,
        "max": summary.max,
        "mean": summary.mean,
        "nonfinite": summary.nonfinite,
    }


def finding_dict(finding: Finding) -> dict[str, Any]:
    return {
        "rule": finding.rule,
        "name": finding.name,
        "severity": str(finding.severity),
        "layer": finding.layer,
        "message": finding.message,
        "details": dict(finding.details),
    }


def strict(value: Any) -> Any:
    """Strict JSON has no NaN or Infinity: such measurements become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: strict(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return value
