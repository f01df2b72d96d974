"""A reader that crashes, hangs or runs out of memory fails only its own input: one line on
stderr, exit 3, and the other inputs' reports stay, with one process or several."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from bncheck import engine, isolation
from bncheck.errors import ModelReadError
from bncheck.isolation import Limits, read_all, read_contained
from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult
from tests.hardening.faulty_readers import faulty_read_model
from tests.hardening.hostile.containment_output import hang_h5, segfault_h5

Run = Callable[..., CliResult]

HEALTHY = FIXTURES / "keras2/nested.h5"
#: Short limits, so that a hang costs the test seconds.
QUICK = Limits(seconds=3.0, memory_mib=256)
FAILURES = {
    "crash": "the reader crashed (signal 11: SIGSEGV) on this file",
    "hang": "reading took longer than 3 s",
    "hog": "reading needed more than 256 MiB",
}


def inputs(folder: Path, *faulty: str) -> list[str]:
    """A healthy model before, between and after each faulty one."""
    paths = [shutil.copy(HEALTHY, folder / "healthy_0.h5")]
    for i, name in enumerate(faulty, 1):
        paths.append(shutil.copy(HEALTHY, folder / f"{name}.h5"))
        paths.append(shutil.copy(HEALTHY, folder / f"healthy_{i}.h5"))
    return [str(path) for path in paths]


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_reading_raises_one_line(tmp_path: Path, failure: str) -> None:
    [path] = [p for p in inputs(tmp_path, failure) if failure in p]
    with pytest.raises(ModelReadError) as raised:
        read_contained(faulty_read_model, path, QUICK)
    assert str(raised.value) == FAILURES[failure]


@pytest.mark.parametrize("jobs", [1, 2])
def test_each_failure_fails_only_its_input(tmp_path: Path, jobs: int) -> None:
    paths = inputs(tmp_path, "crash", "hang", "hog")
    outcomes = read_all(faulty_read_model, paths, jobs, QUICK)
    for path, outcome in zip(paths, outcomes, strict=True):
        name = Path(path).stem
        if name in FAILURES:
            assert isinstance(outcome, ModelReadError)
            assert str(outcome) == FAILURES[name]
        else:
            assert not isinstance(outcome, ModelReadError)
            expected = read_model(path)
            assert outcome.format == expected.format
            assert [layer.summaries for layer in outcome.layers] == [
                layer.summaries for layer in expected.layers
            ]


def test_a_reader_error_stays_the_readers_message(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ModelReadError) as raised:
        read_contained(read_model, str(garbage))
    with pytest.raises(ModelReadError) as direct:
        read_model(str(garbage))
    assert str(raised.value) == str(direct.value)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_command_reports_the_other_inputs(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: str
) -> None:
    monkeypatch.setattr(engine, "read_model", faulty_read_model)
    monkeypatch.setattr(isolation, "DEFAULT_LIMITS", QUICK)
    paths = inputs(tmp_path, "crash", "hang", "hog")
    result = run_cli("inspect", *paths, "--jobs", jobs, "--format", "json", "--read-timeout", "3")
    assert result.code == 3
    errors = result.err.splitlines()
    assert errors == [
        f"bncheck: error: {tmp_path / name}.h5: {FAILURES[name]}"
        for name in ("crash", "hang", "hog")
    ]
    models = result.json()["models"]
    assert [Path(m["path"]).stem for m in models] == [Path(p).stem for p in paths]
    healthy = [m for m in models if m["path"].startswith(str(tmp_path / "healthy"))]
    assert len(healthy) == 4 and all(m["error"] is None and m["layers"] for m in healthy)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_real_libhdf5_segfault_fails_only_its_file(
    run_cli: Run, tmp_path: Path, jobs: str
) -> None:
    crashing = segfault_h5(tmp_path)
    result = run_cli("inspect", HEALTHY, crashing, HEALTHY, "--jobs", jobs, "--format", "json")
    assert result.code == 3
    assert result.err == (
        f"bncheck: error: {crashing}: the reader crashed (signal 11: SIGSEGV) on this file\n"
    )
    models = result.json()["models"]
    assert [m["error"] is None for m in models] == [True, False, True]


def test_a_real_libhdf5_hang_ends_at_the_time_limit(run_cli: Run, tmp_path: Path) -> None:
    hanging = hang_h5(tmp_path)
    result = run_cli("inspect", hanging, HEALTHY, "--read-timeout", "3")
    assert result.code == 3
    assert result.err == f"bncheck: error: {hanging}: reading took longer than 3 s\n"
    assert f"{HEALTHY} (" in result.out


@pytest.mark.parametrize("command", ["inspect", "checkpoint"])
def test_a_read_timeout_must_be_positive(run_cli: Run, command: str) -> None:
    result = run_cli(command, HEALTHY, "--read-timeout", "0")
    assert result.code == 2
    assert result.err.startswith(
        "bncheck: error: Invalid value for '--read-timeout': '0' is not a finite number of "
        "seconds above 0"
    )
    assert len(result.err.splitlines()) == 1


def test_checkpoint_stops_a_hanging_model_at_its_read_timeout(run_cli: Run, tmp_path: Path) -> None:
    hanging = hang_h5(tmp_path)
    checkpoint = FIXTURES / "checkpoints/tf1_saver_all"
    result = run_cli("checkpoint", checkpoint, "--model", hanging, "--read-timeout", "2")
    assert result.code == 3
    assert result.err == f"bncheck: error: {hanging}: reading took longer than 2 s\n"


def test_checkpoint_reads_its_model_contained(run_cli: Run, tmp_path: Path) -> None:
    crashing = segfault_h5(tmp_path)
    checkpoint = FIXTURES / "checkpoints/tf1_saver_all"
    result = run_cli("checkpoint", checkpoint, "--model", crashing)
    assert result.code == 3
    assert result.err == (
        f"bncheck: error: {crashing}: the reader crashed (signal 11: SIGSEGV) on this file\n"
    )
