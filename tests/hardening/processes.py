"""Run a command and measure the peak resident memory of its whole process tree.

``ru_maxrss`` cannot give it: Linux carries a process's peak across ``exec`` (so a child of a
large test process starts out large), and processes bncheck starts to read files in are not
waited for by the command's own process. Sampling ``/proc`` every 20 ms sees every descendant;
an allocation bomb holds its memory long enough to be seen.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

#: Runs bncheck under an address-space cap and prints its outcome and peak memory as JSON.
CHILD = Path(__file__).with_name("_child.py")
REPO = Path(__file__).resolve().parents[2]
#: Only a hang fails a case; how fast each is refused is not asserted (CI machines vary).
HANG_SECONDS = 60.0


@dataclass(frozen=True)
class Measured:
    code: int | None
    """``None`` when the command was killed at its time limit."""
    out: str
    err: str
    seconds: float
    peak_rss_mib: float


def tree_rss_bytes(root: int) -> int:
    """The resident memory of ``root`` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack, seen = 0, [root], set()
    page = os.sysconf("SC_PAGE_SIZE")
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except OSError:
            pass
        stack += children.get(pid, [])
    return total


def run_measured(
    command: Sequence[str], cwd: Path, env: Mapping[str, str], timeout: float
) -> Measured:
    """Run ``command`` to its end or ``timeout``, sampling its process tree's memory."""
    start = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_bytes(process.pid))
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = process.communicate(timeout=timeout)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        out, err = process.communicate()
        code = None
    finally:
        done.set()
        sampler.join()
    return Measured(code, out, err, time.perf_counter() - start, peak / 2**20)


def run_child(args: Sequence[str]) -> dict[str, Any]:
    """bncheck's outcome on ``args`` in the capped child: ``code``, ``out``, ``err`` and
    ``max_rss_mib``. A hang or a child that dies fails the test."""
    command = [sys.executable, str(CHILD), *args]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=HANG_SECONDS, cwd=REPO, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {HANG_SECONDS:g} s")
    assert done.returncode == 0, f"process died ({done.returncode}): {done.stderr[-500:]}"
    outcome: dict[str, Any] = json.loads(done.stdout)
    return outcome
