"""``bncheck.inspect``: the command line's reports, from Python."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import bncheck
from bncheck.findings import ExitCode
from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
UNTOUCHED = FIXTURES / "keras3/untouched_stats.keras"  # two BN001 errors
MOMENTUM_ONE = FIXTURES / "keras3/momentum_one.keras"  # BN008 on two layers
BOTH = [UNTOUCHED, MOMENTUM_ONE]  # BN001 in one model, BN008 in the other


def rules(report: bncheck.Report) -> list[tuple[str, str | None]]:
    return [(finding.rule, finding.layer) for finding in report.findings]


@pytest.mark.parametrize(
    "paths",
    [
        [FIXTURES / "keras3/nested.keras"],
        [UNTOUCHED, FIXTURES / "keras2/nested.h5", FIXTURES / "weights"],
        [FIXTURES / "keras3/frozen_base.keras", FIXTURES / "no-such-model.keras"],
    ],
)
def test_the_json_report_is_the_command_lines(run_cli: Run, paths: list[Path]) -> None:
    cli = run_cli("inspect", *paths, "--format", "json")
    report = bncheck.inspect(paths)
    assert bncheck.render(report, "json") == cli.out
    assert int(report.exit_code) == cli.code


def test_one_path_may_be_a_string_or_a_path_object() -> None:
    assert rules(bncheck.inspect(str(UNTOUCHED))) == rules(bncheck.inspect(UNTOUCHED))
    assert rules(bncheck.inspect(UNTOUCHED)) == [("BN001", "cnn/bn1"), ("BN001", "cnn/bn2")]


@pytest.mark.parametrize(
    ("select", "ignore", "flags"),
    [
        ("BN008", None, ["--select", "BN008"]),
        (["momentum-never-updates", "BN002"], None, ["--select", "BN008,BN002"]),
        (None, "BN001", ["--ignore", "BN001"]),
        (
            "BN001,BN008",
            ["untouched-moving-stats"],
            ["--select", "BN001,BN008", "--ignore", "BN001"],
        ),
    ],
)
def test_select_and_ignore_choose_rules_as_the_flags_do(
    run_cli: Run, select: object, ignore: object, flags: list[str]
) -> None:
    report = bncheck.inspect(BOTH, select=select, ignore=ignore)  # type: ignore[arg-type]
    cli = run_cli("inspect", *BOTH, *flags, "--format", "json")
    assert bncheck.render(report, "json") == cli.out
    assert rules(report) != rules(bncheck.inspect(BOTH))


def test_a_configuration_file_is_read_and_otherwise_found_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "strict.toml"
    config.write_text('fail-on = "never"\nignore = ["BN001"]\n[rules.BN008]\nseverity = "info"\n')
    report = bncheck.inspect(MOMENTUM_ONE, config=config)
    assert rules(report) == [("BN008", "cnn/bn1"), ("BN008", "cnn/bn2")]
    assert {str(finding.severity) for finding in report.findings} == {"info"}
    assert report.exit_code == ExitCode.OK

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bncheck.toml").write_text('select = ["BN008"]\n')
    assert rules(bncheck.inspect(MOMENTUM_ONE)) == [("BN008", "cnn/bn1"), ("BN008", "cnn/bn2")]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bncheck.inspect(UNTOUCHED, select="BN999"), "unknown rule 'BN999'"),
        (lambda: bncheck.inspect(UNTOUCHED, config="missing.toml"), "configuration file not found"),
        (lambda: bncheck.inspect([]), "inspect needs at least one path"),
        (lambda: bncheck.render(bncheck.inspect(UNTOUCHED), "yaml"), "unknown format 'yaml'"),
    ],
)
def test_a_bad_argument_is_a_usage_error_with_one_line(
    call: Callable[[], object], message: str
) -> None:
    with pytest.raises(bncheck.UsageError, match=message) as raised:
        call()
    assert "\n" not in str(raised.value)


def test_an_unreadable_input_is_a_result_not_an_exception(tmp_path: Path) -> None:
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    report = bncheck.inspect([UNTOUCHED, broken])
    assert [model.error is None for model in report.models] == [True, False]
    assert report.models[1].error is not None and "zip" in report.models[1].error
    assert report.exit_code == ExitCode.UNREADABLE


IMPORTS = """
import sys
import bncheck
names = [bncheck.inspect, bncheck.check_model, bncheck.render, bncheck.Report,
         bncheck.GuardResult, bncheck.BatchNormGuardError]
print(sorted(m for m in sys.modules
             if m.split(".")[0] in ("tensorflow", "keras", "jax", "h5py", "matplotlib")))
"""


def test_importing_bncheck_and_its_api_loads_no_framework() -> None:
    done = subprocess.run(
        [sys.executable, "-c", IMPORTS], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


def test_the_public_names_are_listed_and_others_are_not() -> None:
    assert {"inspect", "check_model", "render", "keras", "Report"} <= set(dir(bncheck))
    assert set(bncheck.__all__) == {"__version__", *bncheck._EXPORTS}
    assert set(bncheck.__all__) <= set(dir(bncheck))
    with pytest.raises(AttributeError, match="no attribute 'inspekt'"):
        bncheck.inspekt  # noqa: B018


UNGUARDED = """
import threading, time
print("top level ran")
# A thread, as TensorFlow's: the reading workers then come from multiprocessing's fork server.
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
import bncheck
report = bncheck.inspect({paths!r})
print(int(report.exit_code), [model.error for model in report.models])
"""


def test_a_script_without_a_main_guard_runs_once(tmp_path: Path) -> None:
    """multiprocessing's fork server imports the main module again in each worker: a script
    that calls bncheck at its top level, without ``if __name__ == "__main__"``, ran again in
    every reading worker and failed them. bncheck's workers do without it."""
    script = tmp_path / "script.py"
    script.write_text(UNGUARDED.format(paths=[str(path) for path in BOTH]))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.stdout.splitlines() == ["top level ran", "1 [None, None]"], done.stderr
    assert "Traceback" not in done.stderr


def test_the_read_timeout_fails_a_file_that_reads_longer(tmp_path: Path) -> None:
    from tests.hardening.hostile.containment_output import hang_h5

    hanging = hang_h5(tmp_path)
    healthy = FIXTURES / "keras3" / "nested.keras"
    report = bncheck.inspect([hanging, healthy], read_timeout=2)
    assert [model.error for model in report.models] == ["reading took longer than 2 s", None]
    assert report.exit_code == ExitCode.UNREADABLE


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "5"])
def test_a_read_timeout_that_is_no_finite_number_above_0_is_a_usage_error(value: object) -> None:
    with pytest.raises(bncheck.UsageError, match="read_timeout="):
        bncheck.inspect(FIXTURES / "keras3" / "nested.keras", read_timeout=value)  # type: ignore[arg-type]
