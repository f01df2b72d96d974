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
process never imports TensorFlow, torch or onnxruntime for it, and stays forkable. On Linux the
worker is forked from a warm server (``_WarmServer``): a process that has imported the
framework once and runs nothing (forked from the command, or a fresh interpreter), so that a
command probing a folder of Keras models, or recalibrating and then probing what it wrote,
imports TensorFlow once (about 7 s of CPU), not once per run, and every run still starts from
the same untouched state.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import multiprocessing
import os
import pickle
import re
import resource
import signal
import struct
import subprocess
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing import reduction
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

from bncheck import interrupts
from bncheck.errors import ModelReadError, UsageError
from bncheck.records import record

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext
    from multiprocessing.process import BaseProcess

T = TypeVar("T")


@record
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
            for conn in wait(list(busy), min(timeout, _CHECK_SECONDS)):
                task = busy.pop(conn)
                outcomes[task.position] = task.worker.receive(limits)
                if task.worker.alive:
                    _POOL.give_back(task.worker, limits)
            interrupts.check()
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
        with _main_module_unseen():
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


@contextlib.contextmanager
def _main_module_unseen() -> Iterator[None]:
    """Start a worker without the program's main module: multiprocessing's fork server and
    spawn import it again in each new process (and in the server, to preload), which runs a
    user's script that calls bncheck from its top level, without Python's
    ``if __name__ == "__main__"`` guard, once more in each worker. bncheck's workers need
    nothing from it."""
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main


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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's: it ends the workers
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's handler, if forked from it
    _keep_only(conn.fileno())
    _standard_streams()
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


def _standard_streams() -> None:
    """Python streams on the standard descriptors of a process forked from a command that
    started without them (``>&-``: Python then has ``None`` for ``sys.stdout``; the command
    opened ``/dev/null`` there), so that code writing to them (a framework's log, a progress
    bar) does not fail."""
    for name, fd, mode in (("stdin", 0, "r"), ("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - the process's own


def _keep_only(*fds: int) -> None:
    """Close every descriptor of this forked process above the standard streams but ``fds``. A
    fork holds copies of the command's descriptors: the command's ends of its other workers'
    and servers' connections among them, whose closing those processes wait for to end (when
    the command ends, or is killed)."""
    keep = {fd for fd in fds if fd > 2}
    try:
        open_now = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: every descriptor up to the limit
        open_now = list(range(3, min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 65536)))
    for fd in open_now:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):  # the listing's own, closed already
                os.close(fd)


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


@record
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

#: How long a reading pool waits on its workers before it looks for a Ctrl-C that code running
#: at that moment swallowed (``interrupts.check``).
_CHECK_SECONDS = 0.25

#: Where a contained run's messages stop: one line, not a framework's whole error.
_MESSAGE_CHARS = 300

#: Messages a contained function sends while it runs (progress), relayed by the parent.
Reporter = Callable[[Any], None]


def run_contained(
    function: Callable[..., T],
    args: tuple[Any, ...],
    limits: RunLimits,
    on_report: Reporter,
    imports: tuple[str, ...] = (),
    environment: Mapping[str, str] | None = None,
) -> T:
    """``function(report, *args)`` in a fresh worker process, which alone imports the
    framework it needs, and whose ``report(message)`` calls reach ``on_report`` here. Over
    ``limits`` the worker is killed; an exception there, a crash or a limit is one line (which
    the caller prefixes with what was running, ``probe:``):
    ``UsageError`` stays ``UsageError``, anything else is ``ModelReadError``. ``function`` must
    be a module-level function and its result picklable.

    ``imports`` names the modules the run will import (its framework's, as
    ``bncheck.extras.EXTRAS`` lists them): on Linux the worker is forked from a warm server that
    imported them, and the next run that names them forks from the same server.
    ``environment`` sets variables for the run (and its server) over the command's.

    The worker's standard output and error (TensorFlow's C++ logging, onnxruntime's logger,
    Python warnings, all of which quote names from the file raw) go to a file that only the
    message of a crash quotes from, escaped like any other message. Keras, matplotlib and
    onnxruntime keep their caches in a temporary folder, removed afterwards, instead of the home
    folder, unless the user chose where (``KERAS_HOME``, ``MPLCONFIGDIR``, ``XDG_CACHE_HOME``);
    the run's temporary files (``TMPDIR``, Python's ``tempfile``) go there too, always.
    """
    import shutil
    import tempfile

    deadline = None if limits.seconds is None else time.monotonic() + limits.seconds
    scratch = tempfile.mkdtemp(prefix="bncheck-run-")
    task = (function, args, scratch, os.getcwd(), {**os.environ, **(environment or {})})
    try:
        conn, process = _start_run(task, imports, deadline, limits)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    try:
        return _watch(conn, process, limits, on_report, scratch, deadline)
    finally:
        try:
            conn.close()
            if process.exitcode is None:
                process.kill()
            _end_group(process.pid)
            process.join()
        finally:  # even when Ctrl-C comes meanwhile
            shutil.rmtree(scratch, ignore_errors=True)


def _end_group(pid: int | None) -> None:
    """Kill what the run started and left behind: its process group (a run leads its own).
    A model's code (``--unsafe``) can still leave the group, as any program of the user's can."""
    if pid is not None:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)


def _start_run(
    task: tuple[Any, ...], imports: tuple[str, ...], deadline: float | None, limits: RunLimits
) -> tuple[Connection, _RunProcess]:
    """A worker running ``_run(conn, *task)``, and ``conn``'s other end: forked by the warm
    server of ``imports`` (imported in the run's environment, ``task[-1]``) where there is one,
    otherwise a process of its own. A server still importing at ``deadline`` is killed: the
    import is part of the run's time."""
    server = _warm_server(imports, task[-1]) if imports else None
    if server is not None:
        try:
            return server.fork(pickle.dumps(task), task[2], deadline)
        except TimeoutError:
            _forget(server, kill=True)
            raise ModelReadError(
                f"took longer than {limits.seconds:g} s (--probe-timeout)"
            ) from None
        except (EOFError, OSError):  # the server died (killed from outside): start afresh
            _forget(server)
    context = _POOL._start()
    conn, child = context.Pipe()
    process = context.Process(  # type: ignore[attr-defined]
        target=_run, args=(child, *task), daemon=True
    )
    with _main_module_unseen():
        process.start()
    child.close()
    return conn, process


#: The largest message a run may send (its result): more is refused, not buffered.
_MAX_MESSAGE = 256 << 20


class _Inbox:
    """The messages of a run, framed as ``Connection.send`` frames them, read only as far as the
    bytes have arrived: a run that sends part of a message, or claims a huge one, cannot stop
    the command from watching its limits."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.buffer = bytearray()

    def next(self, timeout: float) -> Any:
        """The next whole message, or ``None`` if none is whole within ``timeout``; raises
        ``EOFError`` when the run closed its end."""
        message = self._whole()
        if message is not None or not wait([self.conn], timeout):
            return message
        chunk = os.read(self.conn.fileno(), 1 << 20)
        if not chunk:
            raise EOFError
        self.buffer += chunk
        return self._whole()

    def _whole(self) -> Any:
        if len(self.buffer) < 4:
            return None
        [size] = struct.unpack("!i", self.buffer[:4])
        start = 4
        if size == -1:  # a message of 2 GiB or more: an 8-byte size follows
            if len(self.buffer) < 12:
                return None
            [size] = struct.unpack("!Q", self.buffer[4:12])
            start = 12
        if size < 0 or size > _MAX_MESSAGE:
            raise ModelReadError(f"sent a message of {size} bytes, more than its result can be")
        if len(self.buffer) < start + size:
            return None
        data = bytes(self.buffer[start : start + size])
        del self.buffer[: start + size]
        return pickle.loads(data)


class _RunProcess(Protocol):
    """What ``_watch`` needs of a run's worker: a ``multiprocessing`` process, or one forked
    by a warm server (``_Forked``)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exitcode(self) -> int | None: ...

    def kill(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...


def _watch(
    conn: Connection,
    process: _RunProcess,
    limits: RunLimits,
    on_report: Reporter,
    scratch: str,
    deadline: float | None,
) -> Any:
    memory = None if limits.memory_mib is None else limits.memory_mib << 20
    inbox = _Inbox(conn)
    while True:
        interrupts.check()
        try:
            message = inbox.next(_POLL_SECONDS)
        except (EOFError, OSError):
            process.join(1)
            raise ModelReadError(_died(process.exitcode, scratch)) from None
        if message is not None:
            if not (isinstance(message, tuple) and len(message) == 2):
                raise ModelReadError("sent a message that is not one of bncheck's")
            kind, value = message
            if kind == "ok":
                return value
            if kind == "usage":
                raise UsageError(str(value))
            if kind == "memory":
                raise ModelReadError("ran out of memory")
            if kind != "report":
                raise ModelReadError(str(value))
            on_report(value)  # then the limits, however fast the reports come
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
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's handler, if forked from it
    _keep_only(conn.fileno())
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)  # what the run starts, the command kills with it (``_end_group``)
    os.chdir(cwd)
    # The command's environment as it is now: a worker from the fork server would otherwise
    # have the server's, as it was when the server started.
    os.environ.clear()
    os.environ.update(environment)
    os.environ.setdefault("KERAS_HOME", os.path.join(scratch, "keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(scratch, "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(scratch, "cache"))  # onnxruntime's
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _temporary_files_in(scratch)
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


#: Environment variables a framework may read when it is imported (TensorFlow's, Keras's
#: backend and home, CUDA's devices, the thread pools'): a warm server serves the runs of a
#: command whose values of them are those it imported under. Other variables reach each run as
#: the command has them when the run starts. ``TF_CONFIG`` is not one: TensorFlow reads it when
#: a multi-worker strategy or cluster resolver is created, in the run.
_READ_AT_IMPORT = re.compile(
    r"(?!TF_CONFIG$)"
    r"(TF|KERAS|CUDA|XLA|TPU|JAX|TORCH|PYTORCH|ORT|OMP|MKL|KMP|OPENBLAS|NVIDIA|HIP|ROCM|LD)_"
    r"|PYTHON|HOME$|TMPDIR$|PATH$"
)

#: Warm servers kept at once; the one used longest ago ends when another starts.
_WARM_SERVERS = 2

#: How long a closed warm server has to end before it is killed.
_CLOSE_GRACE_SECONDS = 0.5


class _WarmServer:
    """A process that has imported a framework and does nothing but fork: each run is a child
    of it, started in milliseconds from the same untouched state (no model loaded, no graph
    built, no random number drawn), instead of a process that spends seconds importing
    TensorFlow. Forked from the command while it has no other thread and no framework (so
    that a single run costs what a worker of its own did), otherwise a fresh interpreter. Linux
    only: forking is how it serves, and elsewhere a process that loaded a framework may not
    fork."""

    def __init__(self, imports: tuple[str, ...], environment: dict[str, str]) -> None:
        import socket
        import tempfile

        self.scratch = tempfile.mkdtemp(prefix="bncheck-warm-")
        ours, theirs = socket.socketpair()
        self.conn = Connection(ours.detach())
        self.process: BaseProcess | subprocess.Popen[bytes]
        try:
            if _forkable():
                self.process = multiprocessing.get_context("fork").Process(
                    target=_serve_forked,
                    args=(theirs.fileno(), self.scratch, imports, environment),
                    daemon=True,
                )
                self.process.start()
            else:
                self.process = _interpreter(theirs.fileno(), self.scratch, imports, environment)
        except BaseException:  # Ctrl-C as it starts: neither the server nor its folder stays
            self.kill()
            raise
        finally:
            theirs.close()
        assert self.process.pid is not None
        self.pid: int = self.process.pid

    def alive(self) -> bool:
        if isinstance(self.process, subprocess.Popen):
            return self.process.poll() is None
        return self.process.is_alive()

    def fork(self, task: bytes, scratch: str, deadline: float | None) -> tuple[Connection, _Forked]:
        """A child running the pickled ``task`` (``_run``'s arguments after its connection),
        and the connection it answers on; ``scratch``, its folder, is the server's to remove
        if the command ends without doing so. ``TimeoutError`` when the server has not forked
        it by ``deadline`` (it is still importing)."""
        ours, theirs = multiprocessing.Pipe()
        try:
            self.conn.send(("run", (task, scratch)))
            reduction.send_handle(self.conn, theirs.fileno(), self.pid)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not wait([self.conn], left):
                raise TimeoutError
            pid = self.conn.recv()
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours, _Forked(self, pid)

    def status(self, pid: int, block: bool) -> int | None:
        """The exit code of child ``pid`` as ``multiprocessing`` gives it (minus the signal
        that ended it), once it ended; ``None`` while it runs. Asked once it ended, the server
        forgets it."""
        self.conn.send(("wait" if block else "poll", pid))
        code: int | None = self.conn.recv()
        return code

    def kill(self) -> None:
        """End the server now (and, with it, its runs), if it started at all."""
        import shutil

        self.conn.close()
        started = getattr(self, "process", None)
        if started is not None and started.pid is not None:
            started.kill()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def close(self) -> None:
        """End the server: it ends when its connection closes, at once if it is waiting for a
        task; one still importing its framework (seconds, for TensorFlow) is killed after a
        short grace, as the command ending has nothing to wait for."""
        import shutil

        self.conn.close()
        if isinstance(self.process, subprocess.Popen):
            try:
                self.process.wait(_CLOSE_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            # Not join(timeout): the server closed the pipe multiprocessing waits on for that
            # (``_keep_only``), and join would wait for the end itself.
            deadline = time.monotonic() + _CLOSE_GRACE_SECONDS
            while self.process.exitcode is None and time.monotonic() < deadline:
                time.sleep(_POLL_SECONDS)
            if self.process.exitcode is None:
                self.process.kill()
                self.process.join()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _serve_forked(
    fd: int, scratch: str, imports: tuple[str, ...], environment: dict[str, str]
) -> None:
    """``_serve_warm`` in a fork of the command, in ``environment``, without the command's end
    of the connection (the server ends when the command closes it) or any other descriptor of
    the command's."""
    _keep_only(fd)
    os.environ.clear()
    os.environ.update(environment)
    _serve_warm(fd, scratch, imports)


def _interpreter(
    fd: int, scratch: str, imports: tuple[str, ...], environment: dict[str, str]
) -> subprocess.Popen[bytes]:
    """A warm server in a fresh interpreter, serving on connection ``fd``; not multiprocessing's
    spawn, which would import the command's main module (a user's script) in it."""
    import json

    code = (
        "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
        "from bncheck.isolation import _serve_warm; "
        "_serve_warm(int(sys.argv[2]), sys.argv[3], tuple(sys.argv[4:]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(sys.path), str(fd), scratch, *imports],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(fd,),
        env=environment,
    )


class _Forked:
    """A run forked by a warm server: its pid, killed by signal, its end learnt from the
    server that is its parent."""

    def __init__(self, server: _WarmServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.exitcode: int | None = None

    def kill(self) -> None:
        if self.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)  # still the child: unreaped until asked

    def join(self, timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.exitcode is None:
            try:
                self.exitcode = self.server.status(self.pid, block=deadline is None)
            except (EOFError, OSError):  # the server is gone, and the child with it
                self.exitcode = -signal.SIGKILL
            if deadline is not None and self.exitcode is None:
                if time.monotonic() > deadline:
                    return
                time.sleep(_POLL_SECONDS)


_SERVERS: dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...]], _WarmServer] = {}


def _warm_server(imports: tuple[str, ...], environment: dict[str, str]) -> _WarmServer | None:
    """The warm server of ``imports`` for the runs of ``environment``, started if need be;
    ``None`` where runs cannot fork from one (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    read = tuple(
        sorted((name, value) for name, value in environment.items() if _READ_AT_IMPORT.match(name))
    )
    key = (imports, read)
    server = _SERVERS.pop(key, None)
    if server is not None and not server.alive():
        server.close()
        server = None
    if server is None:
        while len(_SERVERS) >= _WARM_SERVERS:
            _SERVERS.pop(next(iter(_SERVERS))).close()
        if not _SERVERS:
            atexit.register(close_warm_servers)  # before multiprocessing's own exit handler
        server = _WarmServer(imports, environment)
    _SERVERS[key] = server  # the most recently used last
    return server


def _forget(server: _WarmServer, kill: bool = False) -> None:
    for key, kept in list(_SERVERS.items()):
        if kept is server:
            del _SERVERS[key]
    if kill:
        server.kill()
    else:
        server.close()


def close_warm_servers() -> None:
    """End the warm servers (they end with this process anyway)."""
    while _SERVERS:
        server = _SERVERS.popitem()[1]
        try:
            server.close()
        except KeyboardInterrupt:  # Ctrl-C while the command ends: end the rest at once
            server.kill()
            for rest in _SERVERS.values():
                rest.kill()
            _SERVERS.clear()


def _serve_warm(fd: int, scratch: str, imports: tuple[str, ...]) -> None:
    """A warm server's loop: import ``imports`` once, with the frameworks' caches in
    ``scratch``; then fork a run for each task received on connection ``fd``, and say how each
    ended when asked."""
    import importlib

    conn = Connection(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the command's and its runs'
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the command's handler, if forked from it
    quiet = os.open(os.devnull, os.O_RDWR)  # a server forked from the command: not its terminal
    for stream in (0, 1, 2):
        os.dup2(quiet, stream)
    os.close(quiet)
    _standard_streams()
    os.environ.setdefault("KERAS_HOME", os.path.join(scratch, "keras"))
    os.environ.setdefault("MPLCONFIGDIR", os.path.join(scratch, "matplotlib"))
    os.environ.setdefault("XDG_CACHE_HOME", os.path.join(scratch, "cache"))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    _temporary_files_in(scratch)  # onnxruntime writes a file there as it is imported
    parent = os.getppid()
    _die_with_parent()  # an import that hangs cannot see the command go: die with it
    for module in imports:
        with contextlib.suppress(Exception):  # the run imports it again, and says why not
            importlib.import_module(module)
    if "tensorflow" in sys.modules:  # quiet, as bncheck's own import of it leaves it
        sys.modules["tensorflow"].get_logger().setLevel("ERROR")
    _die_with_parent(0)  # from now on the closed connection says so, and this cleans up
    if os.getppid() != parent:
        os._exit(0)  # the command went during the imports
    runs: dict[int, str] = {}  # the folder of each run not yet reaped
    try:
        while True:
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                return
            if kind == "run":
                task, runs_scratch = value
                answer = reduction.recv_handle(conn)  # the run's connection to the command
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    _run_forked(Connection(answer), task)
                os.close(answer)
                runs[pid] = runs_scratch
                conn.send(pid)
            else:
                pid, status = os.waitpid(value, 0 if kind == "wait" else os.WNOHANG)
                if pid:
                    runs.pop(pid, None)  # the command removes its folder
                conn.send(os.waitstatus_to_exitcode(status) if pid else None)
    finally:
        import shutil

        for pid, folder in runs.items():  # the command ended without reaping them
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _temporary_files_in(scratch: str) -> None:
    """The temporary files of this process (Python's ``tempfile``, and ``TMPDIR`` for the
    libraries that read it: TensorFlow's autograph sources, onnxruntime's session file) go in
    ``scratch``, which is removed when the run or server ends, not in the user's folder."""
    import tempfile

    temporary = os.path.join(scratch, "tmp")
    os.makedirs(temporary, exist_ok=True)
    os.environ["TMPDIR"] = temporary
    tempfile.tempdir = temporary


def _run_forked(conn: Connection, task: bytes) -> None:
    """A run in a child of a warm server: ends with the server, and never returns."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _die_with_parent()
        _run(conn, *pickle.loads(task))
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _die_with_parent(signum: int = signal.SIGKILL) -> None:
    """``signum`` when the parent ends (a run's is the warm server, which ends with the command;
    the server's is the command), so that nothing outlives the command; 0: no longer."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


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
