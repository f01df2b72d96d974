"""The probe and recalibrate run the model in a worker process under limits.

``run_contained`` itself is tested with small functions (no framework); the commands with the
hostile corpus's own builders (``tests/hardening/hostile/probe_limits.py``), each run as the user
runs bncheck, in its own process with a ``HOME`` of its own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bncheck import interrupts
from bncheck.errors import ModelReadError, UsageError
from bncheck.isolation import RunLimits, run_contained
from tests.hardening.hostile import probe_limits

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "fixtures"
NO_LIMITS = RunLimits(None, None)
#: Enough for any of these functions to start on a loaded machine; a hang ends long before.
GENEROUS = 120.0


@pytest.fixture(params=[(), ("json",)], ids=["own-process", "warm-server"])
def imports(request: pytest.FixtureRequest) -> tuple[str, ...]:
    """Each run in a process of its own, and (on Linux) forked from a warm server that imported
    a module for it: the limits and messages are the same."""
    return tuple(request.param)


def _sleep(report: Callable[[Any], None], seconds: float) -> None:
    report("sleeping")
    time.sleep(seconds)


def _allocate(report: Callable[[Any], None], mib: int) -> int:
    block = bytearray(mib << 20)  # zero pages: touch each one so that it is resident
    for offset in range(0, len(block), 4096):
        block[offset] = 1
    time.sleep(GENEROUS)
    return len(block)


def _fail(report: Callable[[Any], None], error: Exception) -> None:
    raise error


def _noisy(report: Callable[[Any], None], text: str) -> dict[str, str]:
    os.write(1, text.encode())
    os.write(2, text.encode())
    print(text, file=sys.stderr, flush=True)
    for step in ("one", "two", "three"):
        report(step)
    return {name: os.environ[name] for name in ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME")}


def _crash(report: Callable[[Any], None], text: str) -> None:
    os.write(2, text.encode())
    os.kill(os.getpid(), signal.SIGSEGV)


def test_a_run_over_its_time_is_killed_and_one_line(imports: tuple[str, ...]) -> None:
    started = time.monotonic()
    with pytest.raises(ModelReadError) as raised:
        run_contained(
            _sleep, (GENEROUS,), RunLimits(seconds=2.0, memory_mib=None), print, imports=imports
        )
    assert str(raised.value) == "took longer than 2 s (--probe-timeout)"
    assert time.monotonic() - started < GENEROUS / 2


def test_a_run_over_its_memory_is_killed_and_one_line(imports: tuple[str, ...]) -> None:
    limits = RunLimits(seconds=GENEROUS, memory_mib=200)
    started = time.monotonic()
    with pytest.raises(ModelReadError) as raised:
        run_contained(_allocate, (400,), limits, print, imports=imports)
    assert str(raised.value) == "needed more than 200 MiB (--probe-memory)"
    assert time.monotonic() - started < GENEROUS / 2


def test_within_its_limits_a_run_returns_its_result_and_relays_its_reports(
    capfd: pytest.CaptureFixture[str], imports: tuple[str, ...]
) -> None:
    reports: list[Any] = []
    caches = run_contained(
        _noisy, (probe_limits.EVIL,), RunLimits(60.0, 1024), reports.append, imports=imports
    )
    assert reports == ["one", "two", "three"]
    # The worker's own output (a framework's logging) never reaches this process's streams.
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    # Keras, matplotlib and onnxruntime cached in a temporary folder, gone now.
    folders = {Path(folder).parent for folder in caches.values()}
    assert len(folders) == 1
    assert not folders.pop().exists()


def test_caches_the_user_placed_stay_where_the_user_placed_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, imports: tuple[str, ...]
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    caches = run_contained(_noisy, ("",), NO_LIMITS, lambda _: None, imports=imports)
    assert caches["KERAS_HOME"] == str(tmp_path)


@pytest.mark.parametrize(
    ("error", "raised", "message"),
    [
        (ValueError(probe_limits.EVIL), ModelReadError, "ValueError: x ::error title=forged"),
        (ModelReadError("bad file"), ModelReadError, "bad file"),
        (UsageError("--data x.npy holds no samples"), UsageError, "--data x.npy holds"),
        (RuntimeError("y" * 5000), ModelReadError, "RuntimeError: yyy"),
    ],
)
def test_every_exception_of_a_run_is_one_short_line(
    error: Exception, raised: type[Exception], message: str, imports: tuple[str, ...]
) -> None:
    with pytest.raises(raised) as caught:
        run_contained(_fail, (error,), NO_LIMITS, print, imports=imports)
    text = str(caught.value)
    assert text.startswith(message)
    assert "\n" not in text
    assert len(text) <= 300


def test_a_crash_is_one_line_quoting_the_last_output(imports: tuple[str, ...]) -> None:
    with pytest.raises(ModelReadError) as raised:
        run_contained(
            _crash, ("first\nF0000 check failed: x\n",), NO_LIMITS, print, imports=imports
        )
    assert str(raised.value) == (
        "crashed (signal 11: SIGSEGV); its last output: F0000 check failed: x"
    )


def _to_the_command(header: bytes, then: Callable[[], None]) -> None:
    """Write ``header`` on every descriptor this run holds beyond the standard streams (its
    connection to the command is the only one), then ``then()``."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # the listing's own
                os.write(int(name), header)
    then()


def _half_a_message(report: Callable[[Any], None]) -> None:
    _to_the_command(struct.pack("!i", 1000), lambda: time.sleep(GENEROUS))


def _a_huge_message(report: Callable[[Any], None]) -> None:
    _to_the_command(struct.pack("!i", 2**31 - 1), lambda: time.sleep(GENEROUS))


def _flood(report: Callable[[Any], None]) -> None:
    while True:
        report("x" * 1000)


def test_a_run_that_sends_half_a_message_still_stops_at_its_time(
    imports: tuple[str, ...],
) -> None:
    with pytest.raises(ModelReadError) as raised:
        run_contained(_half_a_message, (), RunLimits(2.0, None), print, imports=imports)
    assert str(raised.value) == "took longer than 2 s (--probe-timeout)"


def test_a_run_that_claims_a_huge_message_is_refused(imports: tuple[str, ...]) -> None:
    with pytest.raises(ModelReadError) as raised:
        run_contained(_a_huge_message, (), RunLimits(GENEROUS, None), print, imports=imports)
    assert str(raised.value) == ("sent a message of 2147483647 bytes, more than its result can be")


def test_a_run_that_floods_reports_still_stops_at_its_time(imports: tuple[str, ...]) -> None:
    with pytest.raises(ModelReadError) as raised:
        run_contained(_flood, (), RunLimits(2.0, None), lambda _: None, imports=imports)
    assert str(raised.value) == "took longer than 2 s (--probe-timeout)"


def _state(report: Callable[[Any], None]) -> tuple[int, int, int]:
    """How many runs changed the imported module before this one; this run's pid, its
    parent's."""
    import json

    runs: int = getattr(json, "runs_seen", 0)
    json.runs_seen = runs + 1  # type: ignore[attr-defined]
    return runs, os.getpid(), os.getppid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_runs_forked_by_one_warm_server_each_start_from_its_untouched_state() -> None:
    first = run_contained(_state, (), NO_LIMITS, print, imports=("json",))
    second = run_contained(_state, (), NO_LIMITS, print, imports=("json",))
    assert (first[0], second[0]) == (0, 0)  # the first run's change did not reach the second
    assert first[1] != second[1] and first[2] == second[2]  # two children of one server
    assert first[2] != os.getpid()
    other = run_contained(_state, (), NO_LIMITS, print, imports=("json", "csv"))
    assert other[2] != first[2]  # other imports: another server


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_runs_share_a_warm_server_unless_a_variable_read_at_import_differs() -> None:
    """A server serves the runs whose environment the frameworks would import alike:
    ``TF_CONFIG`` is read when a strategy is created, in the run; TensorFlow's log level is read
    at import."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("TF_")}

    def server_of(**environment: str) -> int:
        return run_contained(
            _state, (), NO_LIMITS, print, imports=("json",), environment={**base, **environment}
        )[2]

    cluster = '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}'
    first = server_of(TF_CONFIG="{}")
    assert server_of(TF_CONFIG=cluster) == first
    assert server_of(TF_CPP_MIN_LOG_LEVEL="1") != first


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_a_run_ends_with_its_warm_server() -> None:
    from bncheck import isolation

    pid = run_contained(_state, (), NO_LIMITS, print, imports=("json",))[2]
    isolation.close_warm_servers()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not isolation._SERVERS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_a_server_forked_from_the_command_ends_when_the_command_lets_it_go() -> None:
    """A command without a framework forks its warm server from itself; the server must not
    keep the command's end of their connection, or it would never see it close (and would be
    killed after a wait)."""
    code = (
        "import os, sys, threading\n"
        "from bncheck import isolation\n"
        "from tests.hardening.test_probe_jail import NO_LIMITS, _state\n"
        "assert isolation._forkable()\n"
        "runs = [isolation.run_contained(_state, (), NO_LIMITS, print, imports=('json',))\n"
        "        for _ in range(2)]\n"
        "[server] = isolation._SERVERS.values()\n"
        "assert not hasattr(server.process, 'poll')  # forked, not a fresh interpreter\n"
        "isolation.close_warm_servers()\n"
        "print([run[0] for run in runs], runs[0][2] == runs[1][2], server.process.exitcode)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        cwd=REPO,
        timeout=GENEROUS,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "[0, 0] True 0\n"  # exit code 0: it ended, it was not killed


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_a_killed_command_leaves_no_worker_no_server_and_no_folder(tmp_path: Path) -> None:
    """A command killed outright (SIGKILL: no clean-up runs) leaves nothing running: its reading
    worker and its warm server see their connections close, and the run in progress ends with
    its server, which removes its folder; even a reading worker forked after the server, which
    holds copies of the command's descriptors until it drops them."""
    code = (
        "import os, sys, time\n"
        "from bncheck import isolation\n"
        "from bncheck.readers import read_model\n"
        "from tests.hardening.test_probe_jail import NO_LIMITS, _sleep, _state\n"
        "server = isolation.run_contained(_state, (), NO_LIMITS, print, imports=('json',))[2]\n"
        "isolation.read_contained(read_model, sys.argv[1])\n"
        "[worker] = [w for ws in isolation._POOL._idle.values() for w in ws]\n"
        "print(server, worker.process.pid, flush=True)\n"
        "isolation.run_contained(_sleep, (600,), NO_LIMITS, print, imports=('json',))\n"
    )
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = subprocess.Popen(
        [sys.executable, "-c", code, str(FIXTURES / "probe" / "stale_stats.keras")],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO), TMPDIR=str(temporary)),
        cwd=REPO,
    )
    assert command.stdout is not None
    pids = [int(pid) for pid in command.stdout.readline().split()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    assert command.stdout.readline() == "sleeping\n"  # the run has started: it reports so
    command.kill()
    command.wait()
    deadline = time.monotonic() + GENEROUS
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if _alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, "still running after the command was killed"
    while list(temporary.glob("bncheck-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(temporary.glob("bncheck-*")), list(temporary.iterdir())


def _leave_a_child(report: Callable[[Any], None]) -> int:
    return subprocess.Popen(["sleep", "600"]).pid


def test_what_a_run_leaves_running_ends_with_it(imports: tuple[str, ...]) -> None:
    child = run_contained(_leave_a_child, (), NO_LIMITS, print, imports=imports)
    deadline = time.monotonic() + GENEROUS
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="warm servers fork: Linux")
def test_a_framework_import_that_hangs_stops_at_the_time_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's import of the framework is part of the run's time."""
    (tmp_path / "hangs_on_import.py").write_text("import time\ntime.sleep(600)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelReadError) as raised:
        run_contained(_state, (), RunLimits(3.0, None), print, imports=("hangs_on_import",))
    assert str(raised.value) == "took longer than 3 s (--probe-timeout)"
    from bncheck import isolation

    assert not [key for key in isolation._SERVERS if key[0] == ("hangs_on_import",)]


def _bncheck(argv: Sequence[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    for name in ("KERAS_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME"):
        env.pop(name, None)
    code = "import sys; from bncheck.cli import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str], path: Path, problem: str) -> None:
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith(f"bncheck: error: {path}: {problem}"), done.stderr
    assert done.stderr.count("\n") == 1
    assert "\x1b" not in done.stderr and "\n::" not in done.stderr


def _case(build: Callable[[Path], Sequence[str]], tmp_path: Path) -> tuple[list[str], Path]:
    folder, home = tmp_path / "case", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    return [str(arg) for arg in build(folder)], home


def test_an_onnx_loop_that_never_ends_stops_at_the_probe_timeout(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    argv, home = _case(probe_limits.onnx_loop_forever, tmp_path)
    argv[argv.index("--probe-timeout") + 1] = "3"
    done = _bncheck([*argv, "--format", "json"], home)
    _one_line(done, Path(argv[1]), "probe: took longer than 3 s (--probe-timeout)")
    assert '"format": "onnx"' in done.stdout  # the static report of the model stays


def test_recalibrate_stops_an_endless_onnx_loop_at_its_default_probe_timeout(
    tmp_path: Path,
) -> None:
    """Recalibrate's load-and-estimate worker has the probe's default time limit, so a hostile
    graph cannot hang it; a small ``--probe-timeout`` shows the one line it ends with."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    argv, home = _case(probe_limits.onnx_loop_forever, tmp_path)
    model = Path(argv[1])
    np.save(tmp_path / "data.npy", np.random.default_rng(0).normal(size=(64, 4)).astype("f4"))
    out = tmp_path / "out.onnx"
    recalibrate = ["recalibrate", str(model), "--data", str(tmp_path / "data.npy"), "-o", str(out)]
    shown = _bncheck([*recalibrate, "--help"], home)
    assert shown.returncode == 0, shown.stderr
    assert "(0: no limit). [default: 600.0]" in " ".join(shown.stdout.split()), shown.stdout
    done = _bncheck([*recalibrate, "--include-untouched", "--probe-timeout", "3"], home)
    _one_line(done, model, "recalibrate: took longer than 3 s (--probe-timeout)")
    assert not out.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["term", "int"])
def test_a_command_stopped_by_a_signal_ends_its_runs_and_leaves_no_files(
    tmp_path: Path, signum: int
) -> None:
    """SIGTERM (a CI job cancelled) and SIGINT (Ctrl-C) end the command, its warm server and
    the run in progress, each in one line, with their temporary folders removed."""
    pytest.importorskip("onnxruntime")
    argv, home = _case(probe_limits.onnx_loop_forever, tmp_path)
    argv[argv.index("--probe-timeout") + 1] = "0"  # no limit: only the signal ends it
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO), TMPDIR=str(temporary))
    code = "import sys; from bncheck.cli import main; main(sys.argv[1:])"
    command = subprocess.Popen(
        [sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + GENEROUS
    while not list(temporary.glob("bncheck-run-*")) and time.monotonic() < deadline:
        time.sleep(0.1)  # until the run has started
    assert list(temporary.glob("bncheck-run-*")), "the run never started"
    time.sleep(1.0)
    command.send_signal(signum)
    _, err = command.communicate(timeout=GENEROUS)
    expected: dict[int, tuple[int, str]] = {15: (143, "terminated"), 2: (130, "interrupted")}
    assert (command.returncode, err) == (  # one line: no blank one before it off a terminal
        expected[signum][0],
        f"bncheck: {expected[signum][1]}\n",
    )
    while list(temporary.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)  # the server removes its folder as it ends
    # Nothing at all: onnxruntime's own file of each import goes in the server's folder too.
    assert not list(temporary.iterdir())


def test_a_ctrl_c_swallowed_while_a_run_is_watched_still_ends_the_run() -> None:
    """Python raises KeyboardInterrupt in whatever code runs when Ctrl-C comes, and some code
    swallows it: a callback ``os.fork`` runs in the parent (logging's), a ``__del__``. The
    command must still end the run, not wait for it: here a run with no time limit, and the
    signal swallowed by code called while the command watches it."""
    swallowed: list[object] = []

    def swallow(message: object) -> None:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:  # as code that ignores what it raises
            swallowed.append(message)

    started = time.monotonic()
    with interrupts.handled(), pytest.raises(KeyboardInterrupt):
        run_contained(_sleep, (GENEROUS,), NO_LIMITS, swallow)
    assert swallowed == ["sleeping"]
    assert time.monotonic() - started < GENEROUS / 2


def test_a_server_still_importing_its_framework_ends_without_waiting_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command stopped while its server imports TensorFlow (seconds) ends at once: closing
    the server does not wait for the import to finish."""
    from bncheck import isolation

    (tmp_path / "slow_framework_for_bncheck_test.py").write_text(
        f"import time\ntime.sleep({GENEROUS * 2})\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    server = isolation._WarmServer(("slow_framework_for_bncheck_test",), dict(os.environ))
    time.sleep(0.5)  # importing
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < GENEROUS / 2
    assert not server.alive() and not os.path.exists(server.scratch)


def test_an_onnx_tensor_of_gigabytes_stops_at_the_probe_memory(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    argv, home = _case(probe_limits.onnx_constant_of_shape_bomb, tmp_path)
    argv[argv.index("--probe-memory") + 1] = "400"
    done = _bncheck(argv, home)
    _one_line(done, Path(argv[1]), "probe: needed more than 400 MiB (--probe-memory)")


def test_onnxruntime_logs_no_node_name(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    argv, home = _case(probe_limits.onnx_log_injection, tmp_path)
    done = _bncheck(argv, home)
    _one_line(done, Path(argv[1]), "probe: onnxruntime failed on the batch")
    assert "::error title=forged" in done.stderr  # quoted within the one line, escaped


@pytest.mark.parametrize("command", ["inspect", "recalibrate"])
def test_a_layer_name_tensorflow_rejects_is_one_escaped_line(tmp_path: Path, command: str) -> None:
    pytest.importorskip("tensorflow")
    build = {
        "inspect": probe_limits.keras_hostile_name_probe,
        "recalibrate": probe_limits.keras_hostile_name_recalibrate,
    }[command]
    argv, home = _case(build, tmp_path)
    done = _bncheck(argv, home)
    step = "probe" if command == "inspect" else "recalibrate"
    _one_line(done, Path(argv[1]), f"{step}: ValueError: ")
    assert "is not a valid scope name" in done.stderr
    assert not list(home.rglob("*")), "Keras wrote its cache into HOME"
    assert not (tmp_path / "case" / "OUT.keras").exists()


def test_the_probe_reports_its_steps_from_the_worker_and_imports_no_framework_here(
    tmp_path: Path,
) -> None:
    pytest.importorskip("tensorflow")
    model = FIXTURES / "probe" / "stale_stats.keras"
    code = (
        "import sys\n"
        "from bncheck.engine import inspect_path\n"
        "from bncheck.probe.options import ProbeOptions\n"
        "from bncheck.settings import Settings\n"
        "steps = []\n"
        "result = inspect_path(sys.argv[1], Settings(), ProbeOptions(samples=64), steps.append)\n"
        "assert result.error is None and result.probe is not None and result.probe.ran\n"
        "print(steps[:2], 'tensorflow' in sys.modules, 'keras' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(model)],
        capture_output=True,
        text=True,
        env=dict(os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO)),
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    steps = [f"{model}: checking the model for code", f"{model}: loading with Keras"]
    assert done.stdout == f"{steps} False False\n"


def test_an_unexpected_error_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bncheck import cli

    def broken(*args: Any) -> int:
        raise KeyError("x\n::error::forged")

    monkeypatch.setattr(cli, "run_inspect", broken)
    with pytest.raises(SystemExit) as exited:
        cli.main(["inspect", str(FIXTURES / "probe" / "stale_stats.keras")])
    assert exited.value.code == 3
    err = capsys.readouterr().err
    assert err == (
        "bncheck: error: internal error: KeyError: 'x\\n::error::forged'; please report it\n"
    )
