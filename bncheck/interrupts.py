"""Ctrl-C and SIGTERM while a command runs: one line, from the first instant, never lost.

Python answers a signal by raising ``KeyboardInterrupt`` in whatever code runs at that moment,
and some code swallows it: a callback that ``os.fork`` runs in the parent (logging registers
one), a ``__del__``, a weak reference's callback. A command stopped there would go on waiting
for a run that has no time limit. The handlers here also record the signal, and every loop that
waits on a worker asks ``check``, which raises it again if it was swallowed.

A command stopped after recalibrate has written its output says so (``written``): the file is
whole, and only its report was cut short.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, met as Ctrl-C is: what the command started ends, and its temporary files go."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: int | None = None
"""The signal received and not yet raised by ``check`` or answered by the command."""

_held = False
"""Signals are recorded only, not raised: the command has ended (``hold``)."""

_written: list[str] = []
"""What the command has written so far (recalibrate's output), as the user is shown it."""


def _raise(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _handle(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    if not _held:
        _raise(signum)


def install() -> None:
    """Answer both signals for the rest of the process (the command line's own process)."""
    for signum in _SIGNALS:
        signal.signal(signum, _handle)


def ignore() -> None:
    """The command has ended: a signal no longer interrupts its clean-up as the process exits
    (ending the workers, removing temporary folders), which is bounded."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)


@contextmanager
def handled() -> Iterator[None]:
    """Within it, SIGINT raises ``KeyboardInterrupt`` and SIGTERM ``Terminated``, and ``check``
    raises either again if the first was swallowed. Only the main thread can set handlers: in
    another thread (bncheck called from a thread of the user's) nothing changes."""
    global _received, _held
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in _SIGNALS}
    _written.clear()
    install()
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        _received, _held = None, False
        _written.clear()


def check() -> None:
    """Raise the signal received since the last ``check`` or ``answered``, if any: it reached
    the command, whether or not the code running then let it through."""
    global _received
    if _held:
        return
    signum, _received = _received, None
    if signum is not None:
        _raise(signum)


def hold() -> None:
    """From now on a signal is recorded only: the command has ended, and its process is
    exiting."""
    global _held
    _held = True


def written(name: str) -> None:
    """The command has written ``name`` (escaped for the terminal): if a signal stops it from
    now on, its one line says so. Recalibrate's output is complete once written; what follows
    (inspecting it) may still be stopped."""
    _written.append(name)


def answered(terminated: bool) -> int:
    """The command met a signal: say so in one line, with what it had written, and return its
    exit code (128 plus the signal's number). Nothing is left for ``check`` to raise."""
    global _received
    _received = None
    line = f"bncheck: {'terminated' if terminated else 'interrupted'}"
    if _written:
        line += f" after writing {', '.join(_written)}"
    _written.clear()
    stream = sys.stderr
    if stream is None:  # the process started with stderr closed: there is no one to tell
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    if stream.isatty():
        stream.write("\n")  # after the terminal's ^C
    stream.write(line + "\n")
    stream.flush()
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
