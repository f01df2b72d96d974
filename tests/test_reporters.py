"""Reporters render a report; these check the JSON contract and the table's content."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np

from bncheck.engine import inspect_path
from bncheck.findings import FailOn, Finding, ModelResult, Report, Severity
from bncheck.model import BNLayer, ModelDescription
from bncheck.reporters import json_format, table
from bncheck.settings import Settings
from tests.conftest import FIXTURES


def report_for(*fixtures: str) -> Report:
    return Report(
        models=tuple(inspect_path(str(FIXTURES / f), Settings()) for f in fixtures),
        fail_on=FailOn.ERROR,
    )


def test_json_contract() -> None:
    report = json.loads(json_format.render(report_for("keras3/untouched_stats.keras")))
    assert set(report) >= {"bncheck_version", "models", "summary", "exit_code"}
    model = report["models"][0]
    assert model["format"] == "keras" and model["error"] is None
    layer = model["layers"][0]
    assert set(layer) >= {
        "path",
        "name",
        "class",
        "channels",
        "momentum",
        "epsilon",
        "trainable",
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
    }
    assert layer["path"] == "cnn/bn1" and layer["name"] == "bn1" and layer["channels"] == 8
    assert layer["moving_mean"] == {"min": 0.0, "max": 0.0, "mean": 0.0, "nonfinite": 0}
    assert layer["moving_variance"]["min"] == 1.0
    finding = model["findings"][0]
    assert finding["rule"] == "BN001" and finding["name"] == "untouched-moving-stats"
    assert finding["severity"] == "error" and finding["layer"] == "cnn/bn1"
    assert report["summary"]["errors"] == 2 and report["exit_code"] == 1


def test_json_is_strict_even_with_nan_measurements() -> None:
    text = json_format.render(report_for("keras3/nonfinite.keras"))
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    layer = json.loads(text)["models"][0]["layers"][1]
    assert layer["moving_variance"]["nonfinite"] == 1
    assert math.isfinite(layer["moving_variance"]["max"])


def test_json_all_nan_array_has_null_statistics() -> None:
    nan = np.full(3, np.nan, dtype="float32")
    layer = BNLayer(
        path="m/bn",
        name="bn",
        class_name="BatchNormalization",
        moving_mean=nan,
        moving_variance=np.ones(3, dtype="float32"),
    )
    report = Report(
        models=(ModelResult("m.keras", "keras", ModelDescription("m.keras", "keras", (layer,))),),
        fail_on=FailOn.ERROR,
    )
    entry = json.loads(json_format.render(report))["models"][0]["layers"][0]
    assert entry["moving_mean"] == {"min": None, "max": None, "mean": None, "nonfinite": 3}
    assert entry["gamma"] is None


def test_table_lists_layers_findings_and_verdict() -> None:
    text = table.render(report_for("keras3/nested.keras", "keras3/training_call.keras"))
    for path in ("nested/features/feat_bn1", "nested/block/block_bn_sync", "cnn/bn1"):
        assert path in text
    assert "BN sync" in text  # the synchronized layer is labelled
    assert "error    BN010 hardcoded-training-call  cnn/bn1:" in text
    assert text.rstrip().splitlines()[-1] == (
        "FAIL: 1 error, 0 warnings, 0 infos in 2 models, 8 BatchNorm layers (fail-on: error)"
    )


def test_table_orders_findings_by_severity() -> None:
    finding = lambda sev, rule: Finding(rule, "x", sev, "m/bn", "msg", {})  # noqa: E731
    description = ModelDescription("m.keras", "keras", ())
    model = ModelResult(
        "m.keras",
        "keras",
        description,
        (finding(Severity.INFO, "BN007"), finding(Severity.ERROR, "BN001")),
    )
    lines = table.render(Report((model,), FailOn.ERROR)).splitlines()
    assert [line.split()[1] for line in lines if line.startswith(("error", "info"))] == [
        "BN001",
        "BN007",
    ]


def test_table_leaves_read_errors_to_standard_error() -> None:
    """The error line goes to stderr (app.finish); the table does not repeat it."""
    unreadable = ModelResult("x.h5", None, error="the file is empty")
    assert table.render(Report((unreadable,), FailOn.ERROR)) == ""
    text = table.render(
        Report((*report_for("keras3/untouched_stats.keras").models, unreadable), FailOn.ERROR)
    )
    assert "x.h5" not in text and "the file is empty" not in text
    assert text.splitlines()[-1] == (
        "ERROR: 1 of 2 inputs could not be read: 2 errors, 0 warnings, 0 infos in 1 model, "
        "2 BatchNorm layers (fail-on: error)"
    )


def test_a_model_whose_probe_failed_keeps_its_report_and_is_counted_apart() -> None:
    """A model read whose probe failed is no unreadable input: every reporter keeps its static
    report and says the probe failed; only an input that could not be read is unreadable."""
    from bncheck.reporters import markdown

    [read] = report_for("keras3/untouched_stats.keras").models
    failed = replace(read, error="probe: took longer than 600 s (--probe-timeout)")
    unreadable = ModelResult("x.h5", None, error="the file is empty")
    report = Report((failed, unreadable), FailOn.ERROR)
    assert (report.model_count, report.unreadable_count, report.probe_failed_count) == (1, 1, 1)
    assert int(report.exit_code) == 3
    text = table.render(report)
    assert "  error: probe: took longer than 600 s (--probe-timeout)" in text
    assert "cnn/bn1" in text  # the static report stands
    assert (
        text.rstrip()
        .splitlines()[-1]
        .startswith(
            "ERROR: 1 of 2 inputs could not be read; 1 of 2 inputs could not be probed: 2 errors"
        )
    )
    summary = json.loads(json_format.render(report))["summary"]
    assert (summary["models"], summary["unreadable"], summary["probe_failed"]) == (1, 1, 1)
    assert summary["layers"] == 2
    document = markdown.render(report)
    assert "### Could not be read\n\n- `x.h5`: the file is empty" in document
    assert "### Could not be probed\n\n- `" in document
    assert "| probe failed |" in document


def test_junit_and_github_tell_a_failed_probe_from_an_unreadable_input() -> None:
    from xml.etree import ElementTree

    from bncheck.reporters import github, junit

    [read] = report_for("keras3/untouched_stats.keras").models
    failed = replace(read, error="probe: took longer than 600 s (--probe-timeout)")
    unreadable = ModelResult("x.h5", None, error="the file is empty")
    report = Report((failed, unreadable), FailOn.ERROR)
    suites = ElementTree.fromstring(junit.render(report).split("?>", 1)[1]).findall("testsuite")
    cases = [(case.get("name"), [(e.tag, e.get("type")) for e in case]) for case in suites[0]]
    assert ("(probe)", [("error", "probe failed")]) in cases
    assert sum(1 for name, _ in cases if name in ("cnn/bn1", "cnn/bn2")) == 2  # layers judged
    assert [(c.get("name"), c[0].get("type")) for c in suites[1].findall("testcase")] == [
        ("(model)", "unreadable")
    ]
    lines = github.render(report).splitlines()
    assert any(line.startswith("::error ") and "title=probe failed::" in line for line in lines)
    assert any("file=x.h5,title=unreadable model::" in line for line in lines)
