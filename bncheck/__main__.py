"""``bncheck`` and ``python -m bncheck``: the command line's own process.

Ctrl-C and SIGTERM are answered in one line from before bncheck's imports (which take a
fraction of a second), and once the command has ended they no longer interrupt its clean-up.
"""

from __future__ import annotations

import sys

from bncheck import interrupts


def main() -> None:
    _open_standard_descriptors()
    interrupts.install()
    try:
        try:
            from bncheck.cli import run

            code = run()
        finally:
            interrupts.hold()  # the command has ended: a signal now is recorded only
    except KeyboardInterrupt as exc:  # before the command could answer it
        code = interrupts.answered(isinstance(exc, interrupts.Terminated))
    interrupts.ignore()
    _exit(code)


def _open_standard_descriptors() -> None:
    """Open ``/dev/null`` on each standard descriptor the process started without (``>&-``):
    otherwise the pipes to bncheck's workers would take those numbers, and whatever a worker
    or a framework writes to its standard streams would go into them."""
    import os

    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            opened = os.open(os.devnull, os.O_RDWR)
            if opened != fd:
                os.dup2(opened, fd)
                os.close(opened)


def _exit(code: int) -> None:
    """End the process with ``code`` once every exit handler has run and the standard streams
    are flushed, without tearing the interpreter down object by object, which costs a static
    inspection about a tenth of its CPU. A thread still running, or a stream that cannot be
    flushed, takes the interpreter's own way out."""
    import atexit
    import os
    import threading

    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()  # the handlers the interpreter would run: workers, servers, files
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:  # None: the process started with the stream closed
                stream.flush()
    except (OSError, ValueError):  # a closed pipe: the interpreter says so as it always does
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    main()
