"""Reading untrusted files, and running models, where a native crash, a hang or a memory
blow-up cannot take the command down.

The readers parse hostile bytes, partly in native code (libhdf5 through h5py) that can crash the
process or loop forever on a malformed file. Each reading therefore runs in a worker process
with a limit on its address space and on its time. A worker that dies, runs out of memory or
takes too long fails only the input it was reading, as one ``ModelReadError``; it is replaced and
the other inputs go on.

Each worker reads input after input until one kills it: a folder of healthy models costs a fork
or two, not an interpreter start per file. A worker is forked from this process while it has no
other thread; once TensorFlow or torch is loaded (a probe, recalibrate), from a fork server, a
fresh interpreter that has imported the readers (numpy, h5py) once.

A model run (the probe, recalibrate's estimate) loads the model with its framework in a fresh
worker of its own (``run_contained``), under a wall-time and a resident-memory limit: this
process never imports TensorFlow, torch or onnxruntime for it, and stays forkable.
"""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from bncheck.errors import ModelReadError, UsageError

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

T = TypeVar("T")


@dataclass(frozen=True)
class Limits:
    """What one reading may use."""

    seconds: float = 30.0
    """Wall time for one input. Static reading reads the BatchNorm layers' arrays only: the
    largest healthy models read in a second or two, and the corpus of hostile files is meant
    to end within 10 s each."""
    memory_mib: int = 1024
    """Address space the reading may add to the worker's own (the interpreter with numpy and
    h5py imported). Readers budget their allocations to stay under 500 MB resident; address
    space runs above resident memory (allocator arenas, libhdf5's caches), hence the margin."""


DEFAULT_LIMITS = Limits()

#: Imported by the fork server once, so that each worker starts with them.
PRELOAD = ["bncheck.readers"]


def read_contained(reader: Callable[[str], T], path: str, limits: Limits | None = None) -> T:
    """``reader(path)`` in a worker process; a crash, a hang or running out of memory there
    raises ``ModelReadError`` with one line saying which. ``reader`` must be picklable (a
    module-level function)."""
    [outcome] = read_all(reader, [path], 1, limits)
    if isinstance(outcome, ModelReadError):
        raise outcome
    return outcome


def read_all(
    reader: Callable[[str], T], paths: Sequence[str], jobs: int, limits: Limits | None = None
) -> list[T | ModelReadError]:
    """``reader(path)`` for every path, ``jobs`` at a time, each in a worker process; each
    outcome is the reader's result or the ``ModelReadError`` that says why it has none, in the
    order of ``paths``. Any other exception from a reader is a bug and is raised here.
    ``limits`` defaults to ``DEFAULT_LIMITS``."""
    limits = limits or DEFAULT_LIMITS
    outcomes: dict[int, T | ModelReadError] = {}
    pending = deque(enumerate(paths))
    busy: dict[Any, _Task] = {}  # by the worker's connection
    try:
        while pending or busy:
            while pending and len(busy) < max(1, jobs):
                index, path = pending.popleft()
                task = _Task(_POOL.take(limits), index, time.monotonic() + limits.seconds)
                task.worker.send((reader, path, os.getcwd()))
                busy[task.worker.conn] = task
            timeout = max(0.0, min(task.deadline for task in busy.values()) - time.monotonic())
            for conn in wait(list(busy), timeout):
                task = busy.pop(conn)
                outcomes[task.position] = task.worker.receive(limits)
                if task.worker.alive:
                    _POOL.give_back(task.worker, limits)
            now = time.monotonic()
            for conn, task in list(busy.items()):
                if task.deadline <= now:
                    del busy[conn]
                    task.worker.kill()
                    outcomes[task.position] = ModelReadError(
                        f"reading took longer than {limits.seconds:g} s"
                    )
    finally:
        for task in busy.values():  # interrupted: these workers are mid-read
            task.worker.kill()
    return [outcomes[index] for index in range(len(paths))]


class _Task(NamedTuple):
    worker: _Worker
    position: int
    """Of its path in the paths read."""
    deadline: float


class _Worker:
    """One worker process and the pipe it takes readings from."""

    def __init__(self, context: BaseContext, limits: Limits) -> None:
        self.conn, child = context.Pipe()
        self.process: BaseProcess = context.Process(  # type: ignore[attr-defined]
            target=_serve, args=(child, limits.memory_mib << 20), daemon=True
        )
        self.process.start()
        child.close()
        self.alive = True

    def send(self, task: tuple[Callable[[str], Any], str, str]) -> None:
        self.conn.send(task)

    def receive(self, limits: Limits) -> Any:
        try:
            kind, value = self.conn.recv()
        except (EOFError, OSError):
            self.kill()
            return ModelReadError(_death(self.process.exitcode))
        if kind == "ok":
            return value
        if kind == "error":
            return ModelReadError(value)
        self.kill()  # after a MemoryError or a bug, start the next input afresh
        if kind == "memory":
            return ModelReadError(f"reading needed more than {limits.memory_mib} MiB")
        raise value

    def kill(self) -> None:
        self.alive = False
        self.conn.close()
        if self.process.exitcode is None:
            self.process.kill()
        self.process.join()


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"the reader crashed (signal {-exitcode}: {name}) on this file"
    return f"the reader's process ended (exit code {exitcode}) while reading this file"


class _Pool:
    """Idle workers, kept for the next reading of this command."""

    def __init__(self) -> None:
        self._idle: dict[Limits, list[_Worker]] = {}

    def take(self, limits: Limits) -> _Worker:
        idle = self._idle.get(limits, [])
        while idle:
            worker = idle.pop()
            if worker.process.is_alive():
                return worker
            worker.kill()
        return _Worker(self._start(), limits)

    def give_back(self, worker: _Worker, limits: Limits) -> None:
        self._idle.setdefault(limits, []).append(worker)

    def close(self) -> None:
        for workers in self._idle.values():
            for worker in workers:
                worker.kill()
        self._idle.clear()

    def _start(self) -> BaseContext:
        """Fork this process while it has no other thread (the usual case: static inspection
        imports neither TensorFlow nor torch), which costs no interpreter start; otherwise fork
        from the fork server, a fresh interpreter started once."""
        if _forkable():
            return multiprocessing.get_context("fork")
        if "forkserver" not in multiprocessing.get_all_start_methods():  # Windows
            return multiprocessing.get_context("spawn")
        server = multiprocessing.get_context("forkserver")
        server.set_forkserver_preload(PRELOAD)
        return server


def _forkable() -> bool:
    return (
        sys.platform.startswith("linux")
        and threading.active_count() == 1
        and not any(name in sys.modules for name in ("tensorflow", "torch", "jax"))
    )


_POOL = _Pool()


def close_idle_workers() -> None:
    """End the idle workers. A worker is a fork of this process as it was: a process that
    changes what reading depends on (the format registry, say) starts afresh after this."""
    _POOL.close()


def _serve(conn: Connection, memory: int) -> None:
    """A worker's loop: read what the parent sends until the pipe closes."""
    faulthandler.disable()  # a crash is the parent's one line, not a dump of this process
    if memory:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = _address_space() + memory
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)  # a cap set from outside stays the cap
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    while True:
        try:
            reader, path, cwd = conn.recv()
        except EOFError:
            return
        os.chdir(cwd)  # a relative path means what it means to the command
        outcome: tuple[str, Any]
        try:
            outcome = ("ok", reader(path))
        except ModelReadError as exc:
            outcome = ("error", str(exc))
        except MemoryError:
            outcome = ("memory", None)
        except Exception as exc:  # a bug: the parent raises it
            outcome = ("bug", exc)
        try:
            conn.send(outcome)
        except MemoryError:
            conn.send(("memory", None))
        except Exception as exc:  # an unpicklable result or exception is a bug too
            conn.send(("bug", RuntimeError(f"{type(exc).__name__}: {exc}")))


def _address_space() -> int:
    """This process's address space now, in bytes."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss << 10  # a lower bound: fine


@dataclass(frozen=True)
class RunLimits:
    """What one contained run of a model (a probe, a recalibration) may use; ``None``: no
    limit. The commands take them from ``--probe-timeout`` and ``--probe-memory``."""

    seconds: float | None
    """Wall time of the whole run: the safety scan, loading and every pass."""
    memory_mib: int | None
    """Resident memory of the worker process. TensorFlow reserves far more address space than
    it touches, so this is resident memory, polled, not an address-space limit."""


#: How often the parent looks at the worker's resident memory: a bomb that fills pages as fast
#: as the kernel hands them out gets about this long past the limit.
_POLL_SECONDS = 0.02

#: Where a contained run's messages stop: one line, not a framework's whole error.
_MESSAGE_CHARS = 300

#: Messages a contained function sends while it runs (progress), relayed by the parent.
Reporter = Callable[[Any], None]


def run_contained(
    function: Callable[..., T],
    args: tuple[Any, ...],
    limits: RunLimits,
    on_report: Reporter,
) -> T:
    """``function(report, *args)`` in a fresh worker process, which alone imports the
    framework it needs, and whose ``report(message)`` calls reach ``on_report`` here. Over
    ``limits`` the worker is killed; an exception there, a crash or a limit is one line (which
    the caller prefixes with what was running, ``probe:``):
    ``UsageError`` stays ``UsageError``, anything else is ``ModelReadError``. ``function`` must
    be a module-level function and its result picklable.

    The worker's standard output and error (TensorFlow's C++ logging, onnxruntime's logger,
    Python warnings, all of which quote names from the file raw) go to a file that only the
    message of a crash quotes from, escaped like any other message. Keras, matplotlib and
    onnxruntime keep their caches in a temporary folder, removed afterwards, instead of the home
    folder, unless the user chose where (``KERAS_HOME``, ``MPLCONFIGDIR``, ``XDG_CACHE_HOME``).
    """
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="bncheck-run-")
    context = _POOL._start()
    conn, child = context.Pipe()
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=_run,
        args=(child, function, args, scratch, os.getcwd(), dict(os.environ)),
        daemon=True,
    )
    try:
        process.start()
        child.close()
        return _watch(conn, process, limits, on_report, scratch)
    finally:
        conn.close()
        if process.exitcode is None and process.pid is not None:
            process.kill()
        if process.pid is not None:
            process.join()
        shutil.rmtree(scratch, ignore_errors=True)


def _watch(
    conn: Connection,
    process: BaseProcess,
    limits: RunLimits,
    on_report: Reporter,
    scratch: str,
) -> Any:
    deadline = None if limits.seconds is None else time.monotonic() + limits.seconds
    memory = None if limits.memory_mib is None else limits.memory_mib << 20
    while True:
        if conn.poll(_POLL_SECONDS):
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                process.join(1)
                raise ModelReadError(_died(process.exitcode, scratch)) from None
            if kind == "report":
                on_report(value)
                continue
            if kind == "ok":
                return value
            if kind == "usage":
                raise UsageError(value)
            if kind == "memory":
                raise ModelReadError("ran out of memory")
            raise ModelReadError(value)
        if memory is not None and process.pid is not None and _resident(process.pid) > memory:
            process.kill()
            raise ModelReadError(f"needed more than {limits.memory_mib} MiB (--probe-memory)")
        if deadline is not None and time.monotonic() > deadline:
            process.kill()
            raise ModelReadError(f"took longer than {limits.seconds:g} s (--probe-timeout)")


def _run(
    conn: Connection,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    scratch: str,
    cwd: str,
    environment: dict[str, str],
) -> None:
    """A contained run's worker: quiet, with its caches in ``scratch``; sends the outcome."""
    faulthandler.disable()  # a crash is the parent's one line, not a dump of this process
    os.chdir(cwd)
    # The command's environment as it is now: a worker from the fork server would otherwise
    # have the server's, as it was when the server started.
    os.environ.clear()
    os.environ.update(environment)
    os.environ.setdefault("KERAS_HOME", os.path.join(scratch, "keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(scratch, "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(scratch, "cache"))  # onnxruntime's
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(os.path.join(scratch, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # Python's own streams too, whatever they were (a test's capture, say).
    sys.stdout = open(1, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", errors="backslashreplace", closefd=False)  # noqa: SIM115

    def report(message: Any) -> None:
        conn.send(("report", message))

    outcome: tuple[str, Any]
    try:
        outcome = ("ok", function(report, *args))
    except UsageError as exc:
        outcome = ("usage", str(exc))
    except ModelReadError as exc:
        outcome = ("error", str(exc))
    except MemoryError:
        outcome = ("memory", None)
    except Exception as exc:  # a framework's own error, whatever the file made it raise
        outcome = ("error", one_line(f"{type(exc).__name__}: {exc}"))
    try:
        conn.send(outcome)
    except Exception as exc:  # an unpicklable result: a bug, still one line
        conn.send(("error", f"cannot return the result ({type(exc).__name__}: {exc})"))


def one_line(text: str, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` (a framework's message, which may quote the file) on one line, at most
    ``limit`` characters; whoever shows it escapes it (``bncheck.text.shown``)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _died(exitcode: int | None, scratch: str) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        message = f"crashed (signal {-exitcode}: {name})"
    else:
        message = f"its process ended (exit code {exitcode})"
    last = _last_line(os.path.join(scratch, "output.log"))
    return f"{message}; its last output: {one_line(last)}" if last else message


def _last_line(path: str) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            log.seek(max(0, log.tell() - 4096))
            lines = log.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return next((line for line in reversed(lines) if line.strip()), "")


def _resident(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes; 0 once it is gone or where ``/proc`` is
    not (then only the time limit holds)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) << 10
    except OSError:
        pass
    return 0
