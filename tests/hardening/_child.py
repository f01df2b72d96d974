"""Run ``bncheck ARGS...`` in this process under a memory cap and print what happened as JSON.

Used by the hardening tests so that a crash, a hang or a memory blow-up in one input is caught
and named instead of taking the test run down.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time

MEMORY_CAP = 2 << 30  # bytes of address space


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    from bncheck.cli import main as bncheck

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: object = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            bncheck(sys.argv[1:])
        except SystemExit as done:
            code = done.code
    outcome = {
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "seconds": time.perf_counter() - start,
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    sys.__stdout__.write(json.dumps(outcome))


if __name__ == "__main__":
    main()
