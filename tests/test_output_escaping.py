"""Names from a file cannot forge output: every line of the table, Markdown, GitHub annotations
and stderr shows control characters as escapes, and no line starts a GitHub Actions command
unless it is one of the github reporter's own annotations. JSON keeps the exact names."""

from __future__ import annotations

import io
import re
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path

import pytest

from bncheck.progress import Progress
from bncheck.text import shown
from tests.conftest import CliResult
from tests.hardening.hostile import HIDDEN
from tests.hardening.hostile.containment_output import (
    HOSTILE_NAMES,
    hostile_names_safetensors,
    unreadable_safetensors,
)

Run = Callable[..., CliResult]

ANNOTATION = re.compile(r"^::(error|warning|notice) file=[^:]*,title=[^:]*::")


def assert_safe(text: str, annotations: bool = False) -> None:
    for line in text.split("\n"):
        assert not HIDDEN.search(line), line
        assert "##[" not in line, line
        if line.lstrip().startswith("::"):
            assert annotations and ANNOTATION.match(line), line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a\n::error::x", "a\\n::error::x"),
        ("::add-mask::s", "\\x3a:add-mask::s"),
        ("  ::warning::w", "  \\x3a:warning::w"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\x7f\x85", "\\x7f\\x85"),
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202eevil\u2066", "\\u202eevil\\u2066"),
        ("x##[add-mask]y", "x\\x23#[add-mask]y"),
        ("scope::name", "scope::name"),
        ("plain/layer_1", "plain/layer_1"),
    ],
)
def test_shown_escapes_what_could_forge_output(text: str, expected: str) -> None:
    assert shown(text) == expected


def test_every_control_and_format_character_is_escaped() -> None:
    hidden = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in ("Cc", "Cf", "Zl", "Zp")
    ]
    assert len(hidden) > 200
    assert [c for c in hidden if shown(c) == c] == []


@pytest.mark.parametrize("format", ["table", "markdown", "github", "junit"])
def test_layer_names_cannot_forge_report_lines(run_cli: Run, tmp_path: Path, format: str) -> None:
    model = hostile_names_safetensors(tmp_path / "names.safetensors")
    result = run_cli("inspect", model, "--format", format)
    assert result.code == 1
    assert_safe(result.out, annotations=format == "github")
    assert_safe(result.err)
    assert "\\x3a:add-mask::secret.bn" in result.out
    assert "\\x1b[2J\\x1b[Hcleared screen.bn" in result.out


def test_markdown_shows_links_and_images_as_text(run_cli: Run, tmp_path: Path) -> None:
    model = hostile_names_safetensors(tmp_path / "names.safetensors")
    bad = unreadable_safetensors(tmp_path / "bad.safetensors")
    result = run_cli("inspect", model, bad, "--format", "markdown")
    outside_code = re.sub(r"(`+).*?\1", "", result.out)
    assert "](" not in outside_code.replace("\\](", "")
    assert "<img" not in outside_code  # a code span shows HTML as text
    assert "://" not in outside_code and "www." not in outside_code  # GitHub would link them
    assert "- `" + str(bad) + "`: safetensors entry" in result.out


def test_the_error_line_stays_one_line(run_cli: Run, tmp_path: Path) -> None:
    bad = unreadable_safetensors(tmp_path / "bad.safetensors")
    result = run_cli("inspect", bad)
    assert result.code == 3
    assert result.err.count("\n") == 1
    assert result.err.startswith(f"bncheck: error: {bad}: safetensors entry")
    assert_safe(result.err)


def test_file_names_cannot_forge_lines(run_cli: Run, tmp_path: Path) -> None:
    hostile_names_safetensors(tmp_path / "\n::error::file.safetensors")
    result = run_cli("inspect", tmp_path)
    assert result.code == 1
    assert_safe(result.out)
    assert f"{tmp_path}/\\n::error::file.safetensors (safetensors)" in result.out


def test_json_keeps_the_exact_names(run_cli: Run, tmp_path: Path) -> None:
    model = hostile_names_safetensors(tmp_path / "names.safetensors")
    result = run_cli("inspect", model, "--format", "json")
    [described] = result.json()["models"]
    assert sorted(layer["path"] for layer in described["layers"]) == sorted(
        f"{name}.bn" for name in HOSTILE_NAMES
    )


def test_progress_lines_show_names_escaped() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    Progress(stream).step("m.h5: loading \n::error::x\x1b[2J")
    assert stream.getvalue() == "\rm.h5: loading \\n::error::x\\x1b[2J"
