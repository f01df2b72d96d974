"""The probe's part of the table and JSON reports (built by hand: no model runs here)."""

from __future__ import annotations

import json

import numpy as np

from bncheck.findings import FailOn, ModelResult, Report
from bncheck.model import ModelDescription
from bncheck.probe.results import CodeReference
from bncheck.reporters import json_format, table
from tests.rules.conftest import measured_layer, measured_output, probe_result

DESCRIPTION = ModelDescription(path="m.keras", format="keras", layers=())


def render(probe: object) -> tuple[dict, str]:
    result = ModelResult("m.keras", "keras", DESCRIPTION, (), probe=probe)  # type: ignore[arg-type]
    report = Report(models=(result,), fail_on=FailOn.ERROR)
    return json.loads(json_format.render(report))["models"][0], table.render(report)


def test_probe_that_ran() -> None:
    probe = probe_result(
        (measured_layer(path="m/bn", inference_spread=np.float64(0.5)),),
        (measured_output(relative_error=float("inf")),),
        notes=("a note",),
    )
    model, text = render(probe)
    section = model["probe"]
    assert section["ran"] is True and section["skipped"] is None
    assert section["data"] == {
        "real": True,
        "source": "x.npy",
        "samples": 32,
        "inputs": [{"name": "image", "shape": [32, 8, 8, 1]}],
    }
    assert section["modes"] == ["inference", "training"]
    assert section["outputs"][0]["relative_error"] is None  # strict JSON: no Infinity
    assert section["outputs"][0]["top1_agreement"] == 1.0
    assert section["layers"][0]["path"] == "m/bn"
    assert section["layers"][0]["inference_spread"] == 0.5
    assert section["notes"] == ["a note"]
    assert "  probe: real data (x.npy), 32 samples, inference and training mode" in text
    assert "probe: output 'head': spread 0.5 inference / 0.5 training" in text
    assert "top-1 agreement 100%, batch dependence 0" in text
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
