"""Every rule documents itself; `bncheck rules` and `bncheck explain` show that documentation."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bncheck.rules import RULES
from bncheck.rules.docs import REQUIRED_SECTIONS, SECTIONS, rule_doc
from tests.conftest import CliResult

Run = Callable[..., CliResult]


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_every_rule_docstring_has_the_structure(rule_id: str) -> None:
    rule = RULES[rule_id]
    doc = rule_doc(rule)
    assert doc.summary.endswith("."), doc.summary
    assert doc.description, "what the finding means and why it matters"
    assert set(REQUIRED_SECTIONS) <= set(doc.sections), sorted(doc.sections)
    assert list(doc.sections) == [label for label in SECTIONS if label in doc.sections]
    assert set(doc.options) == set(rule.OPTIONS), "every option documented, and only those"
    assert ("Options" in doc.sections) == bool(rule.OPTIONS)


def test_doc_parts_of_one_rule() -> None:
    doc = rule_doc(RULES["BN006"])
    assert doc.summary == "The layer multiplies some channel by a huge factor at inference."
    assert doc.sections["How to fix"].startswith("use a larger epsilon (Keras's default 1e-3)")
    assert doc.sections["Failing"] == (
        "gamma 0.8, moving_variance 1e-9, epsilon 1e-9 -> gain 17889."
    )
    assert doc.options == {"max_gain": "a channel whose gain exceeds this is reported."}


def test_rules_lists_every_rule(run_cli: Run) -> None:
    result = run_cli("rules")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == ["rule", "name", "default", "needs", "summary"]
    rows = [line.split(maxsplit=4) for line in lines[2:] if line.startswith("BN")]
    assert [row[:4] for row in rows] == [
        [rule.ID, rule.NAME, str(rule.DEFAULT_SEVERITY), rule.NEEDS] for rule in RULES.values()
    ]
    # Summaries wrap under their column: BN001's reads whole across its lines.
    first = lines.index(next(line for line in lines if line.startswith("BN001")))
    column = lines[first].index(rows[0][4])
    wrapped = [lines[first][column:]]
    for line in lines[first + 1 :]:
        if line[:column].strip():
            break
        wrapped.append(line[column:])
    assert " ".join(wrapped) == rule_doc(RULES["BN001"]).summary


@pytest.mark.parametrize("key", ["BN009", "bn009", "suspicious-momentum"])
def test_explain_by_id_or_name(run_cli: Run, key: str) -> None:
    result = run_cli("explain", key)
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[:4] == [
        "BN009 suspicious-momentum",
        "default severity: warning; needs: static (the saved file alone)",
        "",
        "momentum is low, usually PyTorch's convention copied into Keras.",
    ]
    assert "How to fix: use momentum = 1 - pytorch_momentum" in result.out
    assert "  min_momentum (default 0.5): momentum below this is reported." in lines
    assert "Failing: momentum 0.1." in lines
    assert lines[-2] == "Configure: [tool.bncheck.rules.BN009] (severity, min_momentum)."
    assert lines[-1] == 'Turn off: --ignore BN009, or ignore = ["BN009"] in the configuration.'


def test_explain_measures_before_repairing_untouched_statistics(run_cli: Run) -> None:
    """A network that learned without batch statistics is made worse by new ones: BN001 must
    not send the user to recalibrate blindly."""
    out = " ".join(run_cli("explain", "BN001").out.split())  # the text, however it wraps
    assert "model(x, training=True)" in out
    assert "measure before repairing" in out
    assert "do not recalibrate" in out
    assert "bncheck recalibrate MODEL --data DATA -o FIXED" not in out
    assert "--validate HELD_OUT" in out


def test_no_rule_advises_recalibrating_frozen_layers(run_cli: Run) -> None:
    """A head trained on a frozen base's statistics is broken by recalibrating the base."""
    for rule in RULES:
        out = " ".join(run_cli("explain", rule).out.split())
        for line in out.split(". "):
            if "--include-frozen" in line:
                assert "do not" in line.lower() or "lowered" in line, (rule, line)


@pytest.mark.parametrize("rule_id", sorted(RULES))
def test_explain_is_plain_text_that_fits_100_columns(run_cli: Run, rule_id: str) -> None:
    out = run_cli("explain", rule_id).out
    assert "`" not in out and "**" not in out
    assert max(len(line) for line in out.splitlines()) <= 100


def test_rules_fits_100_columns(run_cli: Run) -> None:
    out = run_cli("rules").out
    assert max(len(line) for line in out.splitlines()) <= 100
    assert "`" not in out


@pytest.mark.parametrize("args", [["explain", "BN999"], ["explain", "dead"], ["explain"]])
def test_explain_unknown_rule_is_a_usage_error(run_cli: Run, args: list[str]) -> None:
    result = run_cli(*args)
    assert result.code == 2
    assert result.out == ""
    assert len(result.err.strip().splitlines()) == 1
    assert result.err.startswith("bncheck: error: ")


def test_the_rules_reference_is_generated_from_the_docstrings() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run(
        [sys.executable, str(REPO / "docs/gen_rules.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
