"""The command line's process (``bncheck``, ``python -m bncheck``) ends as the interpreter would:
its exit handlers run, its output is flushed and its exit code kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import FIXTURES

#: A child process that leaves work for the exit: buffered output, an exit handler and, when
#: asked, a thread still running, then ends through the command line's own exit.
CHILD = textwrap.dedent(
    """
    import atexit, sys, threading, time
    from pathlib import Path
    from bncheck.__main__ import _exit

    marker = Path(sys.argv[1])
    atexit.register(lambda: marker.with_suffix(".atexit").write_text("ran"))
    if sys.argv[2] == "thread":
        def late():
            time.sleep(0.3)
            marker.with_suffix(".thread").write_text("done")
        threading.Thread(target=late).start()
    sys.stdout.write("buffered, not yet written")
    _exit(3)
    """
)


#: Output to a pipe is buffered, as it is where PYTHONUNBUFFERED is not set.
BUFFERED = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}


def run_child(tmp_path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "marker"), mode],
        env=BUFFERED,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_exit_runs_the_exit_handlers_and_flushes_the_output(tmp_path: Path) -> None:
    done = run_child(tmp_path, "alone")
    assert (done.returncode, done.stdout, done.stderr) == (3, "buffered, not yet written", "")
    assert (tmp_path / "marker.atexit").read_text() == "ran"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    done = run_child(tmp_path, "thread")
    assert (done.returncode, done.stdout, done.stderr) == (3, "buffered, not yet written", "")
    assert (tmp_path / "marker.thread").read_text() == "done"
    assert (tmp_path / "marker.atexit").read_text() == "ran"


def test_a_report_written_to_a_pipe_arrives_whole() -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bncheck",
            "inspect",
            str(FIXTURES / "keras3" / "untouched_stats.keras"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == ""
    [model] = json.loads(done.stdout)["models"]
    assert model["error"] is None and model["layers"]


def test_a_command_started_with_a_standard_stream_closed_keeps_its_exit_code(
    tmp_path: Path,
) -> None:
    """``bncheck ... >&-`` or ``2>&-``: Python has no stream to write to there, and the command
    still writes what it can, says nothing it cannot, and exits with its own code."""
    report = tmp_path / "report.json"
    model = str(FIXTURES / "keras3" / "untouched_stats.keras")
    closed_stdout = subprocess.run(
        [sys.executable, "-m", "bncheck", "inspect", model, "--format", "json", "-o", str(report)],
        preexec_fn=lambda: os.close(1),
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    assert (closed_stdout.returncode, closed_stdout.stderr) == (1, "")
    assert json.loads(report.read_text())["models"][0]["error"] is None
    closed_stderr = subprocess.run(
        [sys.executable, "-m", "bncheck", "inspect", str(tmp_path / "missing.h5")],
        preexec_fn=lambda: os.close(2),
        stdout=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )
    assert closed_stderr.returncode == 3


def closed_stdout(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bncheck", *args],
        preexec_fn=lambda: os.close(1),
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_report_with_nowhere_to_go_is_one_line_as_a_full_disk_is() -> None:
    model = str(FIXTURES / "keras3" / "untouched_stats.keras")
    closed = closed_stdout("inspect", model)
    assert (closed.returncode, closed.stderr) == (
        2,
        "bncheck: error: cannot write the report: standard output is closed; give --output\n",
    )
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "bncheck", "inspect", model],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    assert (done.returncode, done.stderr) == (
        2,
        "bncheck: error: cannot write the report to standard output: No space left on device\n",
    )


def test_a_probe_runs_with_the_standard_streams_closed(tmp_path: Path) -> None:
    """The workers' pipes do not take the numbers of the closed streams, and their Python has
    streams to write to: the probe measures as it does with them open."""
    report = tmp_path / "report.json"
    done = closed_stdout(
        "inspect",
        str(FIXTURES / "pytorch" / "healthy.onnx"),
        "--data",
        str(FIXTURES / "data" / "digits_nchw_heldout.npy"),
        "--format",
        "json",
        "-o",
        str(report),
    )
    assert done.returncode in (0, 1), done.stderr
    [model] = json.loads(report.read_text())["models"]
    assert model["error"] is None and model["probe"]["data"]["samples"] > 0
