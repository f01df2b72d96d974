"""The JSON report against its committed schema (``bncheck/schemas/report.schema.json``), and
``docs/json.md`` against the schema: every field the schema names is documented."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import FIXTURES, CliResult

DOC = Path(__file__).resolve().parents[1] / "docs" / "json.md"


def schema() -> dict[str, Any]:
    text = resources.files("bncheck").joinpath("schemas/report.schema.json").read_text()
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def test_the_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())


def test_every_fixture_report_matches_the_schema(run_cli: Callable[..., CliResult]) -> None:
    # The whole fixture corpus in one run: every format and era, unreadable inputs included.
    result = run_cli("inspect", FIXTURES, "--format", "json", "--fail-on", "never")
    report = result.json()
    assert report["summary"]["inputs"] > 50
    formats = {model["format"] for model in report["models"]}
    assert {"keras", "h5", "checkpoint", "pytorch", "safetensors", "onnx"} <= formats
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)


def test_a_checkpoint_report_with_a_model_matches_the_schema(
    run_cli: Callable[..., CliResult],
) -> None:
    prefix = FIXTURES / "checkpoints" / "tf1_trainable_only" / "model.ckpt-300"
    result = run_cli("checkpoint", prefix, "--format", "json", "--fail-on", "never")
    report = result.json()
    assert report["models"][0]["checkpoint"]["groups"]
    jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)


def test_a_report_missing_a_field_fails_the_schema(run_cli: Callable[..., CliResult]) -> None:
    """The schema can fail: a layer without ``variance_estimator`` is refused."""
    result = run_cli("inspect", FIXTURES / "keras3", "--format", "json", "--fail-on", "never")
    report = result.json()
    del report["models"][0]["layers"][0]["variance_estimator"]
    with pytest.raises(jsonschema.ValidationError, match="variance_estimator"):
        jsonschema.validate(report, schema(), cls=jsonschema.Draft202012Validator)


def _fields(node: dict[str, Any]) -> Iterator[str]:
    yield from node.get("properties", {})
    for definition in node.get("$defs", {}).values():
        yield from _fields(definition)


def test_docs_json_documents_every_field_of_the_schema() -> None:
    text = DOC.read_text()
    documented = set(re.findall(r'"([a-z_0-9]+)"\s*:', text)) | set(re.findall(r"`(\w+)`", text))
    missing = sorted(set(_fields(schema())) - documented)
    assert missing == []
