"""Corrupted and hostile model files: a valid report or one clear error line, never a traceback,
never a hang, bounded memory.

The default corpus (several hundred cases) runs in CI; ``BNCHECK_MUTATIONS=N`` adds N more
random truncations and byte flips per fixture.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.mutations import (
    Case,
    build_corpus,
    build_other_frameworks_corpus,
    build_tensorflow_corpus,
)
from tests.hardening.processes import run_measured

CHILD = Path(__file__).with_name("_child.py")
REPO = Path(__file__).resolve().parents[2]
#: Only a hang fails a case: how fast each one is read is measured in benchmarks/, not here, where
#: a loaded CI machine would make a timing flaky.
HANG_SECONDS = 60.0
BATCH_SECONDS = 900.0
MAX_RSS_MIB = 400.0
#: The batch process and bncheck's reading workers together.
MAX_TREE_RSS_MIB = 500.0


def judge(case: Case, outcome: dict[str, Any]) -> str | None:
    code, out, err = outcome["code"], outcome["out"], outcome["err"]
    if "Traceback" in out + err:
        return "traceback"
    if outcome["seconds"] > HANG_SECONDS:
        return f"hung for {outcome['seconds']:.0f} s"
    if outcome["max_rss_mib"] > MAX_RSS_MIB:
        return f"used {outcome['max_rss_mib']:.0f} MiB"
    if "MemoryError" in err:
        return "ran out of memory"
    if code in (0, 1):
        report = json.loads(out)
        return None if report["models"][0]["error"] is None else "error in report but exit 0/1"
    if code == 3:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith(f"bncheck: error: {case.path}: "):
            return f"not one clear error line: {err!r}"
        if len(lines[0]) > 400:
            return "error line too long"
        return None
    return f"exit code {code}"


def run_batch(cases: list[Case], directory: Path, static: bool) -> list[dict[str, Any]]:
    """Inspect every case in one child process (under the memory cap with ``static``, where no
    framework loads) and judge each; a crash or hang of that process names its case. Reading
    runs in bncheck's own workers, so one case's crash in a native library is that case's
    error line, not the end of the batch."""
    listing = directory / "cases.json"
    listing.write_text(json.dumps([["inspect", str(c.path), "--format", "json"] for c in cases]))
    mode = "--static-batch" if static else "--batch"
    done = run_measured(
        [sys.executable, str(CHILD), mode, str(listing)], REPO, os.environ, BATCH_SECONDS
    )
    outcomes = [json.loads(line) for line in done.out.splitlines()]
    if len(outcomes) < len(cases):
        stopped = "hung" if done.code is None else f"died ({done.code})"
        pytest.fail(f"the process {stopped} on {cases[len(outcomes)].name}: {done.err[-1000:]}")
    failures = [
        f"{case.name}: {problem}"
        for case, outcome in zip(cases, outcomes, strict=True)
        if (problem := judge(case, outcome))
    ]
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(
        failures[:40]
    )
    if static:
        assert done.peak_rss_mib <= MAX_TREE_RSS_MIB, f"peak memory {done.peak_rss_mib:.0f} MiB"
    return outcomes


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[Case]:
    extra = int(os.environ.get("BNCHECK_MUTATIONS", "0"))
    return build_corpus(tmp_path_factory.mktemp("corpus"), extra=extra)


def test_corpus_is_large_and_deterministic(corpus: list[Case], tmp_path: Path) -> None:
    assert len(corpus) >= 300
    again = build_corpus(tmp_path)
    assert [case.name for case in again][: len(corpus)] == [case.name for case in corpus][
        : len(again)
    ]
    assert all(
        a.path.read_bytes() == b.path.read_bytes()
        for a, b in zip(corpus[:50], again[:50], strict=True)
        if a.path.is_file()
    )


def test_every_corrupted_input_is_handled(corpus: list[Case], tmp_path: Path) -> None:
    outcomes = run_batch(corpus, tmp_path, static=True)
    # The corpus must exercise both outcomes, or it tests less than it claims.
    codes = {outcome["code"] for outcome in outcomes}
    assert 3 in codes and codes & {0, 1}


def test_every_corrupted_checkpoint_and_savedmodel_is_handled(tmp_path: Path) -> None:
    """One process reads every case, without the memory cap."""
    cases = build_tensorflow_corpus(tmp_path / "cases")
    outcomes = run_batch(cases, tmp_path, static=False)
    assert {outcome["code"] for outcome in outcomes} >= {3}


def test_every_corrupted_pytorch_safetensors_and_onnx_file_is_handled(tmp_path: Path) -> None:
    """One process, without TensorFlow, reads every case."""
    extra = int(os.environ.get("BNCHECK_MUTATIONS", "0"))
    cases = build_other_frameworks_corpus(tmp_path, extra=extra)
    assert len(cases) >= 150
    outcomes = run_batch(cases, tmp_path, static=True)
    codes = {outcome["code"] for outcome in outcomes}
    assert 3 in codes and codes & {0, 1}
