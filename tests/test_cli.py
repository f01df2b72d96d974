"""What a user meets on the command line: exit codes, output choices, one-line errors."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bncheck.cli import use_color
from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
HEALTHY = FIXTURES / "keras3/healthy_cnn.keras"
UNTOUCHED = FIXTURES / "keras3/untouched_stats.keras"  # two BN001 errors
MOMENTUM = FIXTURES / "keras3/pytorch_momentum.keras"  # two BN009 warnings
FROZEN = FIXTURES / "keras3/frozen_base.keras"  # two BN007 infos


def test_healthy_model_exits_zero(run_cli: Run) -> None:
    result = run_cli("inspect", HEALTHY)
    assert result.code == 0
    assert "cnn/bn1" in result.out and "cnn/bn2" in result.out
    assert result.out.rstrip().splitlines()[-1].startswith("OK: 0 errors, 0 warnings, 0 infos")
    assert result.err == ""


def test_error_findings_exit_one(run_cli: Run) -> None:
    result = run_cli("inspect", UNTOUCHED)
    assert result.code == 1
    assert "BN001 untouched-moving-stats" in result.out
    assert result.out.rstrip().splitlines()[-1].startswith("FAIL: 2 errors")


@pytest.mark.parametrize(
    ("path", "fail_on", "code"),
    [
        (MOMENTUM, "error", 0),
        (MOMENTUM, "warning", 1),
        (FROZEN, "warning", 0),
        (FROZEN, "info", 1),
        (UNTOUCHED, "never", 0),
    ],
)
def test_fail_on_threshold(run_cli: Run, path: Path, fail_on: str, code: int) -> None:
    assert run_cli("inspect", path, "--fail-on", fail_on).code == code


def test_several_paths_report_together_and_take_the_worst_code(run_cli: Run) -> None:
    result = run_cli("inspect", HEALTHY, UNTOUCHED, "--format", "json")
    report = result.json()
    assert result.code == 1
    assert [m["path"] for m in report["models"]] == [str(HEALTHY), str(UNTOUCHED)]
    assert report["summary"] == {
        "inputs": 2,
        "models": 2,
        "layers": 4,
        "errors": 2,
        "warnings": 0,
        "infos": 0,
        "unreadable": 0,
        "probe_failed": 0,
    }


def test_unreadable_input_wins_but_readable_ones_are_still_reported(
    run_cli: Run, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.keras"
    result = run_cli("inspect", UNTOUCHED, missing, "--format", "json")
    assert result.code == 3
    report = result.json()
    assert report["models"][0]["findings"]
    assert report["models"][1]["error"] == "no such file or directory"
    assert result.err == f"bncheck: error: {missing}: no such file or directory\n"
    # A missing path is an input, not a model.
    summary = report["summary"]
    assert (summary["inputs"], summary["models"], summary["unreadable"]) == (2, 1, 1)


def test_table_names_an_unreadable_input_once_and_counts_inputs_apart_from_models(
    run_cli: Run, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.keras"
    result = run_cli("inspect", UNTOUCHED, missing)
    assert result.code == 3
    assert result.err == f"bncheck: error: {missing}: no such file or directory\n"
    assert str(missing) not in result.out
    assert result.out.splitlines()[-1] == (
        "ERROR: 1 of 2 inputs could not be read: 2 errors, 0 warnings, 0 infos in 1 model, "
        "2 BatchNorm layers (fail-on: error)"
    )


def test_output_file(run_cli: Run, tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    result = run_cli("inspect", UNTOUCHED, "--format", "json", "--output", target)
    assert result.code == 1
    assert result.out == ""
    assert '"BN001"' in target.read_text()


def test_unwritable_output_is_a_usage_error(run_cli: Run, tmp_path: Path) -> None:
    result = run_cli("inspect", HEALTHY, "--output", tmp_path / "no-such-dir" / "r.txt")
    assert result.code == 2
    assert result.err.startswith("bncheck: error: cannot write --output")
    assert len(result.err.strip().splitlines()) == 1


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def truncated(source: Path, target: Path, keep: float) -> Path:
    data = source.read_bytes()
    return write(target, data[: int(len(data) * keep)])


UNREADABLE_CASES: dict[str, Callable[[Path], Path]] = {
    "missing file": lambda tmp: tmp / "nope.keras",
    "empty file": lambda tmp: write(tmp / "empty.keras", b""),
    "text file": lambda tmp: write(tmp / "notes.h5", b"hello, this is not a model\n"),
    "truncated .keras": lambda tmp: truncated(HEALTHY, tmp / "cut.keras", 0.5),
    "truncated .h5": lambda tmp: truncated(FIXTURES / "keras3/healthy_cnn.h5", tmp / "cut.h5", 0.5),
    "zip without config": lambda tmp: _zip(tmp / "other.keras", {"readme.txt": b"hi"}),
    "zip without weights": lambda tmp: _zip(tmp / "noweights.keras", {"config.json": b"{}"}),
    "config not json": lambda tmp: _rezip(HEALTHY, tmp / "badcfg.keras", {"config.json": b"{nope"}),
    "plain directory": lambda tmp: tmp,
}


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _rezip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return _zip(target, {**members, **replace})


@pytest.mark.parametrize("case", sorted(UNREADABLE_CASES))
def test_unreadable_inputs_exit_three_with_one_line(
    run_cli: Run, tmp_path: Path, case: str
) -> None:
    path = UNREADABLE_CASES[case](tmp_path)
    result = run_cli("inspect", path)
    assert result.code == 3
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"bncheck: error: {path}: ")
    assert result.out == ""  # the table does not repeat the error, and has nothing else to say


@pytest.mark.parametrize(
    "args",
    [
        ["inspect", str(HEALTHY), "--fail-on", "sometimes"],
        ["inspect", str(HEALTHY), "--format", "xml"],
        ["inspect"],
        ["inspect", str(HEALTHY), "--no-such-option"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_two_with_one_line(run_cli: Run, args: list[str]) -> None:
    result = run_cli(*args)
    assert result.code == 2
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert result.err.startswith("bncheck: error: ")


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "ten"])
@pytest.mark.parametrize(
    "args",
    [
        ["inspect", str(HEALTHY), "--read-timeout"],
        ["checkpoint", str(HEALTHY), "--read-timeout"],
        ["inspect", str(HEALTHY), "--probe", "--probe-timeout"],
        ["recalibrate", str(HEALTHY), "--data", str(HEALTHY), "--probe-timeout"],
        ["inspect", str(HEALTHY), "--probe", "--rescale"],
    ],
    ids=["read-timeout", "checkpoint-read-timeout", "probe-timeout", "recalibrate", "rescale"],
)
def test_a_limit_or_factor_that_is_no_finite_number_is_a_usage_error(
    run_cli: Run, args: list[str], value: str
) -> None:
    """A NaN limit would never be reached and an infinite one is none: both are refused."""
    result = run_cli(*args, value)
    assert result.code == 2
    [line] = result.err.splitlines()
    assert line.startswith(f"bncheck: error: Invalid value for '{args[-1]}': '{value}' is not a")


def test_an_output_of_dash_is_stdout(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run_cli("inspect", HEALTHY, "--format", "json", "-o", "-")
    assert result.code == 0, result.err
    assert result.json()["models"][0]["error"] is None
    assert list(tmp_path.iterdir()) == []


def test_model_is_recognised_by_content_not_extension(run_cli: Run, tmp_path: Path) -> None:
    disguised = tmp_path / "model.bin"
    shutil.copy(UNTOUCHED, disguised)
    report = run_cli("inspect", disguised, "--format", "json").json()
    assert report["models"][0]["format"] == "keras"


def test_python_dash_m_and_console_script() -> None:
    script = Path(sys.executable).parent / "bncheck"  # installed beside the interpreter
    for command in ([sys.executable, "-m", "bncheck"], [str(script)]):
        done = subprocess.run([*command, "inspect", str(UNTOUCHED)], capture_output=True, text=True)
        assert done.returncode == 1, done.stderr
        assert "BN001" in done.stdout


def test_version(run_cli: Run) -> None:
    from bncheck import __version__

    result = run_cli("--version")
    assert result.code == 0
    assert __version__ in result.out


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("output", "stream", "environ", "colour"),
    [
        (None, Terminal(), {}, True),
        (None, Terminal(), {"NO_COLOR": "1"}, False),
        (None, Terminal(), {"NO_COLOR": ""}, True),  # https://no-color.org: set and non-empty
        (None, io.StringIO(), {}, False),  # a pipe or a file
        ("report.txt", Terminal(), {}, False),
    ],
)
def test_colour_only_on_a_terminal_without_no_color(
    output: str | None, stream: io.StringIO, environ: dict[str, str], colour: bool
) -> None:
    assert use_color(output, stream, environ) is colour


def test_piped_table_has_no_colour(run_cli: Run) -> None:
    assert "\x1b[" not in run_cli("inspect", UNTOUCHED).out


@pytest.mark.parametrize(
    ("args", "rules"),
    [
        ((), {"BN001", "BN008"}),
        (("--select", "BN008"), {"BN008"}),
        (("--select", "BN001,momentum-never-updates"), {"BN001", "BN008"}),
        (("--select", "BN001", "--select", "BN008"), {"BN001", "BN008"}),
        (("--ignore", "BN001"), {"BN008"}),
        (("--select", "BN001,BN008", "--ignore", "untouched-moving-stats"), {"BN008"}),
    ],
)
def test_select_and_ignore_flags(run_cli: Run, args: tuple[str, ...], rules: set[str]) -> None:
    """Statistics never updated (BN001) and momentum 1.0 (BN008, which BN001 leaves alone)."""
    momentum_one = FIXTURES / "keras3/momentum_one.keras"
    result = run_cli("inspect", UNTOUCHED, momentum_one, "--format", "json", *args)
    assert {f["rule"] for m in result.json()["models"] for f in m["findings"]} == rules


def test_unknown_rule_in_a_flag_is_a_usage_error(run_cli: Run) -> None:
    result = run_cli("inspect", HEALTHY, "--ignore", "BN999")
    assert result.code == 2
    assert result.err == "bncheck: error: unknown rule 'BN999' (see 'bncheck rules')\n"


def test_recalibrate_names_a_written_model_it_could_not_inspect_on_stderr(
    run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Exit code 3 always comes with its line on stderr: here the inspection of the written
    model failed, after the repair was written."""
    from bncheck.findings import FailOn, ModelResult
    from bncheck.recalibrate import command
    from bncheck.recalibrate.results import Recalibration

    out = tmp_path / "out.onnx"

    def written(options: object, progress: object) -> Recalibration:
        result = Recalibration(
            model="model.onnx",
            output=str(out),
            data="data.npy",
            batches=1,
            samples=4,
            layers=(),
            verification=None,
            refusal=None,
            fail_on=FailOn.ERROR,
        )
        return result.written(str(out), ModelResult(str(out), "onnx", error="probe: it broke"))

    monkeypatch.setattr(command, "recalibrate", written)
    result = run_cli("recalibrate", FIXTURES / "keras3/untouched_stats.keras", "-o", out)
    assert result.code == 3
    assert result.err.strip().splitlines() == [f"bncheck: error: {out}: probe: it broke"]
