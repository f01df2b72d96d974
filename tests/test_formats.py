"""The CI formats (SARIF, JUnit, Markdown, GitHub annotations) and the coloured table, on small
fixtures with exact expectations."""

from __future__ import annotations

import io
import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pytest

from bncheck.engine import inspect_path
from bncheck.findings import FailOn, Finding, ModelResult, Report, Severity
from bncheck.model import BNLayer, ModelDescription
from bncheck.reporters import REPORTERS, github, junit, markdown, sarif, table
from bncheck.reporters.options import RenderOptions
from bncheck.rules import RULES
from bncheck.rules.docs import rule_doc
from bncheck.settings import Settings
from tests.conftest import FIXTURES, REPO, CliResult
from tests.report_text import unwrapped

Run = Callable[..., CliResult]

UNSTABLE = "fixtures/keras3/unstable_gain.keras"  # BN006 warning on cnn/bn2
FROZEN_CALL = "fixtures/keras3/training_call_frozen.keras"  # BN007 and BN010 infos on cnn/bn1
UNTOUCHED = "fixtures/keras3/untouched_stats.keras"  # BN001 errors on cnn/bn1 and cnn/bn2
MISSING = "models/missing.keras"
SCHEMA_NAME = "sarif-schema-2.1.0.json"


def report_for(*paths: str, fail_on: FailOn = FailOn.ERROR) -> Report:
    """Inspect fixtures by their repository-relative paths, as a CI job in the checkout would."""
    models = []
    for path in paths:
        if path == MISSING:
            models.append(ModelResult(path, None, error="no such file or directory"))
        else:
            result = inspect_path(str(REPO / path), Settings())
            models.append(ModelResult(path, result.format, result.description, result.findings))
    return Report(tuple(models), fail_on)


def synthetic(layer_path: str, message: str, severity: Severity = Severity.ERROR) -> Report:
    """One model with one layer and one finding whose texts a test chooses."""
    layer = BNLayer(
        path=layer_path,
        name=layer_path.rsplit("/", 1)[-1],
        class_name="BatchNormalization",
        moving_mean=np.zeros(2),
        moving_variance=np.ones(2),
    )
    finding = Finding("BN004", "negative-variance", severity, layer_path, message, {})
    description = ModelDescription("m,1:x.keras", "keras", (layer,))
    return Report((ModelResult("m,1:x.keras", "keras", description, (finding,)),), FailOn.ERROR)


# --- SARIF -----------------------------------------------------------------------------------


#: The official schema, committed unmodified with its OASIS notice (``tests/schemas/NOTICE.md``).
SARIF_SCHEMA = Path(__file__).parent / "schemas" / SCHEMA_NAME


def test_sarif_validates_against_the_official_schema() -> None:
    import jsonschema

    schema = json.loads(SARIF_SCHEMA.read_text(encoding="utf-8"))
    # The draft the schema names for itself (draft-04), with its formats checked.
    kind = jsonschema.validators.validator_for(schema)
    kind.check_schema(schema)
    validator = kind(schema, format_checker=kind.FORMAT_CHECKER)
    for report in (
        report_for(UNTOUCHED, UNSTABLE, FROZEN_CALL, MISSING),
        report_for("fixtures/keras3/nonfinite.keras"),  # NaN measurements in the details
        report_for("fixtures/keras3/healthy_cnn.keras"),  # no results at all
    ):
        errors = sorted(validator.iter_errors(json.loads(sarif.render(report))), key=str)
        assert errors == [], errors[0].message


def test_sarif_results_point_at_the_model_file_and_layer() -> None:
    log = json.loads(sarif.render(report_for(UNSTABLE, FROZEN_CALL)))
    assert log["version"] == "2.1.0"
    [run] = log["runs"]
    results = [
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["logicalLocations"][0]["fullyQualifiedName"],
            r["message"]["text"].split(":")[0],
        )
        for r in run["results"]
    ]
    assert results == [
        ("BN006", "warning", UNSTABLE, "cnn/bn2", "cnn/bn2"),
        ("BN007", "note", FROZEN_CALL, "cnn/bn1", "cnn/bn1"),
        ("BN010", "note", FROZEN_CALL, "cnn/bn1", "cnn/bn1"),
    ]
    rule_ids = [rule["id"] for rule in run["tool"]["driver"]["rules"]]
    assert [rule_ids[r["ruleIndex"]] for r in run["results"]] == ["BN006", "BN007", "BN010"]
    assert run["invocations"] == [
        {"executionSuccessful": True, "exitCode": 0, "toolExecutionNotifications": []}
    ]


def test_sarif_describes_every_rule_with_its_documentation() -> None:
    [run] = json.loads(sarif.render(report_for(UNTOUCHED)))["runs"]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == list(RULES)
    by_id = {rule["id"]: rule for rule in rules}
    bn006 = by_id["BN006"]
    assert bn006["name"] == "unstable-gain"
    assert bn006["shortDescription"]["text"] == rule_doc(RULES["BN006"]).summary
    assert bn006["help"]["text"] == rule_doc(RULES["BN006"]).text
    assert "**How to fix:** use a larger epsilon" in bn006["help"]["markdown"]
    assert "- `max_gain` (default 1000): a channel whose gain" in bn006["help"]["markdown"]
    assert "`bncheck recalibrate`" in bn006["help"]["markdown"]  # ``literal`` became `code`
    assert bn006["defaultConfiguration"] == {"level": "warning"}
    assert by_id["BN005"]["defaultConfiguration"] == {"level": "note"}


def test_sarif_fingerprints_identify_rule_model_and_layer() -> None:
    [run] = json.loads(sarif.render(report_for(UNTOUCHED)))["runs"]
    prints = [r["partialFingerprints"][sarif.FINGERPRINT] for r in run["results"]]
    assert len(set(prints)) == 2  # two layers
    [again] = json.loads(sarif.render(report_for(UNTOUCHED)))["runs"]
    assert [r["partialFingerprints"] for r in again["results"]] == [
        r["partialFingerprints"] for r in run["results"]
    ]


def test_sarif_unreadable_input_is_a_failed_invocation_notification() -> None:
    [run] = json.loads(sarif.render(report_for(UNTOUCHED, MISSING)))["runs"]
    [invocation] = run["invocations"]
    assert invocation["executionSuccessful"] is False
    assert invocation["exitCode"] == 3
    [note] = invocation["toolExecutionNotifications"]
    assert note["level"] == "error"
    assert note["message"]["text"] == f"{MISSING}: no such file or directory"
    assert note["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == MISSING


@pytest.mark.parametrize(
    ("path", "uri"),
    [
        ("models/a.keras", "models/a.keras"),
        ("./models//a.keras", "models/a.keras"),
        ("models/my model#1.keras", "models/my%20model%231.keras"),
        ("/srv/models/a.keras", "file:///srv/models/a.keras"),
    ],
)
def test_sarif_artifact_uris(path: str, uri: str) -> None:
    assert sarif.artifact_uri(path) == uri


# --- JUnit -----------------------------------------------------------------------------------


def test_junit_suite_per_model_case_per_layer() -> None:
    text = junit.render(report_for(UNTOUCHED, FROZEN_CALL, MISSING))
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("5", "2", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == [UNTOUCHED, FROZEN_CALL, MISSING]
    assert [(s.get("tests"), s.get("failures"), s.get("errors")) for s in suites] == [
        ("2", "2", "0"),
        ("2", "0", "0"),
        ("1", "0", "1"),
    ]
    untouched = suites[0].findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in untouched] == [
        (UNTOUCHED, "cnn/bn1"),
        (UNTOUCHED, "cnn/bn2"),
    ]
    failure = untouched[0].find("failure")
    assert failure is not None
    assert failure.get("type") == "BN001"
    assert failure.get("message") == "BN001 untouched-moving-stats"
    assert failure.text == (
        "error BN001 untouched-moving-stats: moving_mean and moving_variance are still at their "
        "initial values (0 and 1) in all 8 channels, but gamma and beta trained: the statistics "
        "were never updated (a loop calling model(x) without training=True, or statistics lost "
        "in saving?); measure with "
        "labelled --data before recalibrating, which can make such a model worse"
    )
    suite_properties = suites[0].find("properties")
    assert suite_properties is not None
    assert [(p.get("name"), p.get("value")) for p in suite_properties] == [("format", "keras")]


def test_junit_findings_below_fail_on_pass_and_are_listed() -> None:
    frozen = ET.fromstring(junit.render(report_for(FROZEN_CALL))).find("testsuite")
    assert frozen is not None
    bn1, bn2 = frozen.findall("testcase")
    assert bn1.find("failure") is None
    out = bn1.find("system-out")
    assert out is not None and out.text is not None
    assert [line.split(":")[0] for line in out.text.splitlines()] == [
        "info BN007 frozen-layer",
        "info BN010 hardcoded-training-call",
    ]
    assert list(bn2) == []  # a healthy layer is a passing test case

    strict = ET.fromstring(junit.render(report_for(FROZEN_CALL, fail_on=FailOn.INFO)))
    failure = strict.find("testsuite/testcase/failure")
    assert failure is not None
    assert failure.get("message") == "BN007 frozen-layer, BN010 hardcoded-training-call"
    assert strict.get("failures") == "1"


def test_junit_unreadable_model_is_an_error_case() -> None:
    case = ET.fromstring(junit.render(report_for(MISSING))).find("testsuite/testcase")
    assert case is not None
    assert case.get("name") == junit.MODEL_CASE
    error = case.find("error")
    assert error is not None
    assert (error.get("type"), error.get("message")) == ("unreadable", "no such file or directory")


def test_junit_model_level_findings_and_unknown_layers_get_their_own_cases() -> None:
    description = ModelDescription("m.keras", "keras", ())
    findings = (
        Finding("BN001", "untouched-moving-stats", Severity.ERROR, None, "model-wide", {}),
        Finding("BN002", "untrained-layer", Severity.ERROR, "m/elsewhere", "not a BN layer", {}),
    )
    model = ModelResult("m.keras", "keras", description, findings)
    cases = ET.fromstring(junit.render(Report((model,), FailOn.ERROR))).findall(".//testcase")
    assert [c.get("name") for c in cases] == ["m/elsewhere", junit.MODEL_CASE]
    assert all(c.find("failure") is not None for c in cases)


def test_junit_survives_characters_xml_cannot_carry() -> None:
    text = junit.render(synthetic("m/bn\x01\ud800<&>", 'value "x" \x1b[31m'))
    case = ET.fromstring(text).find(".//testcase")
    assert case is not None
    # Controls show as escapes, as in every text report; a lone surrogate XML cannot carry.
    assert case.get("name") == "m/bn\\x01\ufffd<&>"
    failure = case.find("failure")
    assert failure is not None and failure.text is not None
    assert failure.text.endswith('value "x" \\x1b[31m')


# --- Markdown --------------------------------------------------------------------------------


def test_markdown_for_a_pull_request_comment() -> None:
    text = markdown.render(report_for(UNSTABLE, FROZEN_CALL, MISSING, fail_on=FailOn.WARNING))
    assert text == (
        "## bncheck: ERROR\n"
        "\n"
        "1 of 3 inputs could not be read: 0 errors, 1 warning, 2 infos in 2 models, "
        "4 BatchNorm layers (fail-on: warning)\n"
        "\n"
        "| status | model | format | BN layers | errors | warnings | infos |\n"
        "| --- | --- | --- | ---: | ---: | ---: | ---: |\n"
        f"| FAIL | `{UNSTABLE}` | keras | 2 | 0 | 1 | 0 |\n"
        f"| ok | `{FROZEN_CALL}` | keras | 2 | 0 | 0 | 2 |\n"
        f"| unreadable | `{MISSING}` |  |  |  |  |  |\n"
        "\n"
        "### Findings\n"
        "\n"
        "| severity | rule | model | layer | message |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| warning | BN006 `unstable-gain` | `{UNSTABLE}` | `cnn/bn2` | 1 of 16 channels have "
        "gain \\|gamma\\|/sqrt(var+eps) above 1000 (worst: channel 2, gain 3.491e+04, "
        "moving_variance 1e-10) |\n"
        f"| info | BN007 `frozen-layer` | `{FROZEN_CALL}` | `cnn/bn1` | trainable=False: the "
        "layer runs in inference mode even inside fit(), using and never updating its moving "
        "statistics |\n"
        f"| info | BN010 `hardcoded-training-call` | `{FROZEN_CALL}` | `cnn/bn1` | the saved "
        "graph calls the layer with training=True, but trainable=False makes Keras run it in "
        "inference mode anyway |\n"
        "\n"
        "### Could not be read\n"
        "\n"
        f"- `{MISSING}`: no such file or directory\n"
    )


def test_markdown_healthy_report_has_no_findings_section() -> None:
    text = markdown.render(report_for("fixtures/keras3/healthy_cnn.keras"))
    assert text.startswith("## bncheck: OK\n\n0 errors, 0 warnings, 0 infos in 1 model")
    assert "### Findings" not in text and "### Could not be read" not in text


def test_markdown_cells_hold_hostile_names() -> None:
    text = markdown.render(synthetic("m/a`b|c", "line one\nline <b>two</b> | three"))
    row = text.splitlines()[-1]
    assert row == (
        "| error | BN004 `negative-variance` | `m,1:x.keras` | ``m/a`b\\|c`` | "
        "line one\\\\nline &lt;b&gt;two&lt;/b&gt; \\| three |"
    )


# --- GitHub annotations ----------------------------------------------------------------------


def test_github_annotations() -> None:
    text = github.render(report_for(UNSTABLE, FROZEN_CALL, MISSING, fail_on=FailOn.WARNING))
    assert text.splitlines() == [
        f"::warning file={UNSTABLE},title=BN006 unstable-gain::cnn/bn2: 1 of 16 channels have gain "
        "|gamma|/sqrt(var+eps) above 1000 (worst: channel 2, gain 3.491e+04, moving_variance "
        "1e-10)",
        f"::notice file={FROZEN_CALL},title=BN007 frozen-layer::cnn/bn1: trainable=False: the "
        "layer runs in inference mode even inside fit(), using and never updating its moving "
        "statistics",
        f"::notice file={FROZEN_CALL},title=BN010 hardcoded-training-call::cnn/bn1: the saved "
        "graph calls the layer with training=True, but trainable=False makes Keras run it in "
        "inference mode anyway",
        f"::error file={MISSING},title=unreadable model::no such file or directory",
        "ERROR: 1 of 3 inputs could not be read: 0 errors, 1 warning, 2 infos in 2 models, "
        "4 BatchNorm layers (fail-on: warning)",
    ]


def test_github_annotation_escaping() -> None:
    [line, _] = github.render(synthetic("m/bn", "100% sure\r\nsecond: line")).splitlines()
    assert line == (
        "::error file=m%2C1%3Ax.keras,title=BN004 negative-variance::"
        "m/bn: 100%25 sure\\r\\nsecond: line"
    )


# --- table -----------------------------------------------------------------------------------


def test_table_colours_severities_and_verdict_only_when_asked() -> None:
    report = report_for(UNSTABLE, FROZEN_CALL, fail_on=FailOn.WARNING)
    plain = table.render(report)
    coloured = table.render(report, RenderOptions(color=True))
    assert "\x1b[" not in plain
    assert "\x1b[33mwarning\x1b[0m  BN006 unstable-gain  cnn/bn2:" in coloured
    assert "\x1b[36minfo\x1b[0m     BN007 frozen-layer  cnn/bn1:" in coloured
    assert coloured.rstrip().splitlines()[-1].startswith("\x1b[31m\x1b[1mFAIL\x1b[0m: 0 errors")
    assert click.unstyle(coloured) == plain


def finding_lines(text: str) -> list[str]:
    """The lines of a text report that belong to findings: a severity, or a wrapped line."""
    severities = tuple(f"{str(severity):<8} " for severity in Severity)
    return [
        line
        for line in click.unstyle(text).splitlines()
        if line.startswith((*severities, table.CONTINUATION))
    ]


LONG_MESSAGE = (
    "statistics that never moved while gamma and beta trained mean the network learned with "
    "BatchNorm in inference mode, so re-estimating them would change what every later layer "
    "was trained on; measure on held-out data before repairing, and keep the stored ones if "
    "the accuracy with them is what training reached"
)


@pytest.mark.parametrize("width", [40, 60, 80, 100, 160])
@pytest.mark.parametrize("color", [False, True])
def test_table_wraps_findings_to_the_width_and_joining_gives_them_back(
    width: int, color: bool
) -> None:
    report = report_for(UNTOUCHED, UNSTABLE, FROZEN_CALL, fail_on=FailOn.WARNING)
    long_one = synthetic("m/bn", LONG_MESSAGE)
    for case in (report, long_one):
        text = table.render(case, RenderOptions(color=color, width=width))
        lines = finding_lines(text)
        assert max(len(line) for line in lines) <= width
        if width < 100:
            assert any(line.startswith(table.CONTINUATION) for line in lines)
        joined = finding_lines(unwrapped(click.unstyle(text)))
        findings = [
            finding
            for model in case.models
            for finding in sorted(model.findings, key=lambda f: -f.severity)
        ]
        for line, finding in zip(joined, findings, strict=True):
            # The message comes back exactly; the two spaces before the layer are one where a
            # narrow terminal breaks the line there.
            assert line.endswith(f": {finding.message}")
            head = f"{finding.severity!s:<8} {finding.rule} {finding.name}  {finding.layer}:"
            assert line.split()[: len(head.split())] == head.split()


def test_table_keeps_a_name_longer_than_a_line_whole() -> None:
    name = "block/" * 20 + "bn"
    text = table.render(synthetic(name, LONG_MESSAGE), RenderOptions(width=60))
    lines = finding_lines(text)
    assert [line for line in lines if len(line) > 60] == [f"{table.CONTINUATION}{name}:"]
    assert unwrapped(text).count(f"{name}: {LONG_MESSAGE}") == 1


def test_a_wrapped_line_never_starts_a_workflow_command() -> None:
    """A name quoted in a message can land at the start of a wrapped line; the runner trims the
    indentation, so the name is escaped there as at the start of any line."""
    message = "the layer " + " ".join(["word"] * 30) + " ::error::forged and more text"
    starts = set()
    for width in range(40, 120):
        for line in finding_lines(
            table.render(synthetic("m/bn", message), RenderOptions(width=width))
        ):
            assert not line.lstrip().startswith("::")
            starts.add(line.lstrip()[:4])
    assert "\\x3a" in starts  # some width did put the name first on a line


def test_the_command_wraps_to_the_terminal_and_to_100_columns_elsewhere(
    run_cli: Run,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    piped = run_cli("inspect", FIXTURES / "keras3/untouched_stats.keras")
    assert max(len(line) for line in finding_lines(piped.out)) <= 100
    assert any(len(line) > 80 for line in finding_lines(piped.out))
    monkeypatch.setenv("COLUMNS", "60")  # what the terminal reports its width as
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    terminal = run_cli("inspect", FIXTURES / "keras3/untouched_stats.keras")
    assert max(len(line) for line in finding_lines(terminal.out)) <= 60
    assert unwrapped(terminal.out) == unwrapped(piped.out)
    saved = tmp_path / "report.txt"
    run_cli("inspect", FIXTURES / "keras3/untouched_stats.keras", "--output", saved)
    assert saved.read_text() == piped.out


def test_every_format_is_available_on_the_command_line(run_cli: Run) -> None:
    for name in ("table", "json", "sarif", "junit", "markdown", "github"):
        assert name in REPORTERS
        result = run_cli("inspect", FIXTURES / "keras3/untouched_stats.keras", "--format", name)
        assert result.code == 1, name
        assert "BN001" in result.out, name


def test_recalibrate_wraps_to_the_terminal_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """recalibrate's report of the written model wraps as inspect's does: the terminal's width
    on a terminal, 100 columns in a pipe."""
    from bncheck import cli

    class Stream(io.StringIO):
        def __init__(self, tty: bool) -> None:
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setenv("COLUMNS", "60")
    assert cli._text_width(Stream(tty=True)) == 60
    assert cli._text_width(Stream(tty=False)) == 100
