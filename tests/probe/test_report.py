"""The probe's part of the table and JSON reports (built by hand: no model runs here)."""

from __future__ import annotations

import json

import numpy as np

from bncheck.findings import FailOn, ModelResult, Report
from bncheck.model import ModelDescription
from bncheck.probe.results import CodeReference, Metric, ProbeData
from bncheck.reporters import json_format, table
from tests.rules.conftest import measured_layer, measured_output, probe_result

DESCRIPTION = ModelDescription(path="m.keras", format="keras", layers=())


def render(probe: object) -> tuple[dict, str]:
    result = ModelResult("m.keras", "keras", DESCRIPTION, (), probe=probe)  # type: ignore[arg-type]
    report = Report(models=(result,), fail_on=FailOn.ERROR)
    return json.loads(json_format.render(report))["models"][0], table.render(report)


def test_probe_that_ran() -> None:
    metric = Metric("accuracy", stored=0.924, reestimated=0.62, training=0.64)
    probe = probe_result(
        (measured_layer(path="m/bn", inference_spread=np.float64(0.5)),),
        (
            measured_output(
                relative_error=float("inf"), reestimated_top1_agreement=0.75, metric=metric
            ),
        ),
        notes=("a note",),
        data=ProbeData(
            real=True,
            source="x.npz",
            samples=2048,
            inputs=(("image", (32, 8, 8, 1)),),
            batch_size=32,
            batches=64,
            available=5000,
            labelled=True,
        ),
    )
    model, text = render(probe)
    section = model["probe"]
    assert section["ran"] is True and section["skipped"] is None
    assert section["data"] == {
        "real": True,
        "source": "x.npz",
        "samples": 2048,
        "available": 5000,
        "batch_size": 32,
        "batches": 64,
        "labelled": True,
        "inputs": [{"name": "image", "shape": [32, 8, 8, 1]}],
    }
    assert section["modes"] == ["inference", "training"]
    output = section["outputs"][0]
    assert output["relative_error"] is None  # strict JSON: no Infinity
    assert output["reestimated_top1_agreement"] == 0.75
    assert output["metric"] == {
        "name": "accuracy",
        "stored": 0.924,
        "reestimated": 0.62,
        "training_mode": 0.64,
    }
    layer = section["layers"][0]
    assert layer["path"] == "m/bn" and layer["inference_spread"] == 0.5
    assert layer["population"]["batches"] == 64
    assert layer["population"]["mean_shift"] == 0.0
    assert layer["population"]["variance_factor"] == 1.0
    assert section["notes"] == ["a note"]
    assert (
        "  probe: real data (x.npz, labelled), 2048 of 5000 samples in 64 batches of 32; "
        "inference and training mode"
    ) in text
    assert (
        "probe: output 'head': spread 0.5 inference / 0.5 training, re-estimated statistics "
        "change 25.0% of top-1 classes, batch dependence 0"
    ) in text
    assert (
        "probe: output 'head': accuracy 92.4% with the stored statistics, 62.0% re-estimated, "
        "64.0% in training mode"
    ) in text
    assert "  probe note: a note" in text


def test_skipped_probe() -> None:
    reference = CodeReference("lambda", "m/l", "holding marshalled Python bytecode")
    probe = probe_result(content=(reference,), skipped="the file holds code", data=None)
    model, text = render(probe)
    assert model["probe"]["ran"] is False
    assert model["probe"]["skipped"] == "the file holds code"
    assert model["probe"]["content"] == [
        {"kind": "lambda", "where": "m/l", "detail": "holding marshalled Python bytecode"}
    ]
    assert "  probe: skipped: the file holds code" in text


def test_no_probe_asked() -> None:
    model, text = render(None)
    assert model["probe"] is None
    assert "probe" not in text
