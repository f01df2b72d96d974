"""Ctrl-C and SIGTERM while a command runs, never lost.

Python answers a signal by raising ``KeyboardInterrupt`` in whatever code runs at that moment,
and some code swallows it: a callback that ``os.fork`` runs in the parent (logging registers
one), a ``__del__``, a weak reference's callback. A command stopped there would go on waiting
for a run that has no time limit. The handlers here also record the signal, and every loop that
waits on a worker asks ``check``, which raises it again if it was swallowed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM, met as Ctrl-C is: what the command started ends, and its temporary files go."""


_received: int | None = None
"""The signal received and not yet raised by ``check`` or answered by the command."""


def _raise(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _handle(signum: int, frame: Any) -> None:
    global _received
    _received = signum
    _raise(signum)


@contextmanager
def handled() -> Iterator[None]:
    """Within it, SIGINT raises ``KeyboardInterrupt`` and SIGTERM ``Terminated``, and ``check``
    raises either again if the first was swallowed. Only the main thread can set handlers: in
    another thread (bncheck called from a thread of the user's) nothing changes."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.signal(signum, _handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
        _received = None


def check() -> None:
    """Raise the signal received since the last ``check`` or ``answered``, if any: it reached
    the command, whether or not the code running then let it through."""
    global _received
    signum, _received = _received, None
    if signum is not None:
        _raise(signum)


def answered() -> None:
    """The command has met the signal (it is ending): nothing is left for ``check`` to raise."""
    global _received
    _received = None
