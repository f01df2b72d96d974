"""JUnit XML, the test report format of GitLab, Jenkins, Azure Pipelines and others.

A test suite per model and a test case per BatchNorm layer. A layer with findings at or above
``--fail-on`` fails, with every such finding in its failure text; milder findings are listed in
the test case's ``system-out``. Findings about the model as a whole, and an input that could not
be read (an error), belong to an extra ``(model)`` test case; a model read whose probe failed
keeps its layers' test cases and errs in a ``(probe)`` one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from bncheck.findings import FailOn, Finding, ModelResult, Report
from bncheck.reporters.options import PLAIN, RenderOptions
from bncheck.text import shown

MODEL_CASE = "(model)"
"""Name of the test case for model-level findings and read errors."""
PROBE_CASE = "(probe)"
"""Name of the test case that errs when a model was read and its probe failed."""

# Characters XML 1.0 cannot carry, even escaped; names read from a file may contain them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def render(report: Report, options: RenderOptions = PLAIN) -> str:
    root = ET.Element("testsuites", name="bncheck")
    suites = [_suite(model, report.fail_on) for model in report.models]
    root.extend(suites)
    for total in ("tests", "failures", "errors"):
        root.set(total, str(sum(int(suite.get(total, 0)) for suite in suites)))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _suite(model: ModelResult, fail_on: FailOn) -> ET.Element:
    suite = ET.Element("testsuite", name=_xml(model.path))
    if model.format is not None:
        properties = ET.SubElement(suite, "properties")
        ET.SubElement(properties, "property", name="format", value=model.format)
    if model.unreadable:
        case = _case(suite, model.path, MODEL_CASE)
        ET.SubElement(case, "error", type="unreadable", message=_xml(model.error or ""))
    else:
        for layer in _case_names(model):
            found = [f for f in model.findings if (f.layer or MODEL_CASE) == layer]
            _judge(_case(suite, model.path, layer), found, fail_on)
        if model.probe_failed:
            case = _case(suite, model.path, PROBE_CASE)
            ET.SubElement(case, "error", type="probe failed", message=_xml(model.error or ""))
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(case.find("failure") is not None for case in cases)))
    suite.set("errors", str(sum(case.find("error") is not None for case in cases)))
    return suite


def _case_names(model: ModelResult) -> list[str]:
    """Every BN layer in model order, then layers only findings name, then ``(model)`` if any
    finding concerns the model as a whole."""
    names = [layer.path for layer in model.description.layers] if model.description else []
    for finding in model.findings:
        name = finding.layer or MODEL_CASE
        if name not in names and name != MODEL_CASE:
            names.append(name)
    if any(finding.layer is None for finding in model.findings):
        names.append(MODEL_CASE)
    return names


def _case(suite: ET.Element, classname: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", classname=_xml(classname), name=_xml(name))


def _judge(case: ET.Element, findings: list[Finding], fail_on: FailOn) -> None:
    failing = [f for f in findings if fail_on.fails(f.severity)]
    passing = [f for f in findings if not fail_on.fails(f.severity)]
    if failing:
        rules = ", ".join(dict.fromkeys(f"{f.rule} {f.name}" for f in failing))
        failure = ET.SubElement(case, "failure", type=failing[0].rule, message=_xml(rules))
        failure.text = _lines(failing)
    if passing:
        ET.SubElement(case, "system-out").text = _lines(passing)


def _lines(findings: Iterable[Finding]) -> str:
    """One line per finding: the text between them is ours, each finding's is escaped."""
    return "\n".join(_xml(f"{f.severity} {f.rule} {f.name}: {f.message}") for f in findings)


def _xml(text: str) -> str:
    """Text from a file as one line XML can carry. Tools print a JUnit report's names and
    failure texts as they are (a CI log that shows the file, a summary that renders it), so
    they are escaped as every other text report escapes them (``shown``)."""
    return _NOT_XML.sub("\ufffd", shown(text))
