"""Run bncheck in this process and print what happened as JSON.

    python _child.py ARGS...             one run under a memory cap; one JSON object
    python _child.py --batch CASES.json  each argument list of the file in turn, in one process;
                                         one JSON line per run, flushed, so a crash names the
                                         case it hit; each run's peak memory is its own
    python _child.py --static-batch CASES.json
                                         the same, under the memory cap

Used by the hardening tests so that a crash, a hang or a memory blow-up on one input is caught
and named instead of taking the test run down.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
import time
from typing import Any

MEMORY_CAP = 2 << 30  # bytes of address space for single runs


def peak_rss_kib() -> int:
    """This process's peak resident memory. ``VmHWM`` belongs to the process's own memory map;
    ``ru_maxrss`` would also count the parent's peak, which Linux carries across exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak_rss() -> None:
    """Start this process's ``VmHWM`` afresh, so that each run of a batch reports its own peak
    (Linux: writing 5 to ``clear_refs`` resets it to the resident memory now)."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass


def run(argv: list[str]) -> dict[str, Any]:
    from bncheck.cli import main as bncheck

    reset_peak_rss()
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    code: object = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            bncheck(argv)
        except SystemExit as done:
            code = done.code
    return {
        "code": code,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "seconds": time.perf_counter() - start,
        "max_rss_mib": peak_rss_kib() / 1024,
    }


def main() -> None:
    stdout = sys.__stdout__  # the pipe to the parent, whatever a reader does to sys.stdout
    assert stdout is not None
    if sys.argv[1:2] in (["--batch"], ["--static-batch"]):
        if sys.argv[1] == "--static-batch":
            resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
        with open(sys.argv[2]) as handle:
            for argv in json.load(handle):
                stdout.write(json.dumps(run(argv)) + "\n")
                stdout.flush()
        return
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    stdout.write(json.dumps(run(sys.argv[1:])))


if __name__ == "__main__":
    main()
