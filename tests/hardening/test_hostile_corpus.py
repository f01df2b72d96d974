"""Every case of the hostile corpus (``tests/hardening/hostile/``) keeps every promise.

Each case runs ``bncheck`` in its own process, in the case's folder, with a ``HOME`` of its own,
under an address-space cap where the command needs no framework, while this process samples the
resident memory of the whole process tree (bncheck may read in child processes of its own).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.hardening import hostile
from tests.hardening.hostile import CANARY, HIDDEN, HostileCase
from tests.hardening.processes import run_measured

REPO = Path(__file__).resolve().parents[2]
#: Only a hang fails a case on time: speed lives in benchmarks/, not in a test a loaded machine
#: would make flaky.
HANG_SECONDS = 120.0
#: Address space for commands that need no framework (TensorFlow maps far more than it uses).
ADDRESS_SPACE = 3 << 30
#: A command of bncheck's GitHub reporter: its properties escape every colon.
ANNOTATION = re.compile(r"::(error|warning|notice) file=[^:]*,title=[^:]*::")


def all_cases() -> list[HostileCase]:
    cases: list[HostileCase] = []
    for module in pkgutil.iter_modules(hostile.__path__):
        cases += importlib.import_module(f"{hostile.__name__}.{module.name}").CASES
    return cases


CASES = all_cases()


def test_the_corpus_covers_every_family() -> None:
    names = [case.name for case in CASES]
    assert len(names) == len(set(names)), "case names must be unique"


@dataclass(frozen=True)
class Outcome:
    code: int | None
    """``None`` when the run was killed for hanging."""
    out: str
    err: str
    seconds: float
    peak_rss_mib: float


def snapshot(root: Path) -> dict[str, str]:
    """Every file below ``root`` with its SHA-256, size and modification time."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            found[path.relative_to(root).as_posix()] = f"{digest}:{stat.st_size}:{stat.st_mtime_ns}"
    return found


def run_case(case: HostileCase, folder: Path, home: Path, argv: list[str]) -> Outcome:
    cap = f"({ADDRESS_SPACE}, {ADDRESS_SPACE})"
    limit = f"import resource; resource.setrlimit(resource.RLIMIT_AS, {cap});"
    if case.needs != "core":
        limit = ""
    code = f"{limit}import sys; from bncheck.cli import main; main(sys.argv[1:])"
    env = dict(os.environ, HOME=str(home), PYTHONPATH=str(REPO))
    done = run_measured([sys.executable, "-c", code, *argv], folder, env, HANG_SECONDS)
    return Outcome(done.code, done.out, done.err, done.seconds, done.peak_rss_mib)


def broken_promises(case: HostileCase, root: Path) -> list[str]:
    folder, home = root / "case", root / "home"
    folder.mkdir(parents=True)
    home.mkdir()
    argv = [str(arg) for arg in case.build(folder)]
    before = snapshot(folder)
    outcome = run_case(case, folder, home, argv)
    # The frameworks keep caches in HOME (Keras's keras.json, onnxruntime's device id): only
    # the case's own folder must stay as it was, and no canary may appear anywhere.
    annotations = "github" in argv  # --format github: the reporter's own commands start lines
    canary = any(root.rglob(CANARY))
    report = "json" in argv  # a single file's JSON report: a refusal names it in one line
    return judge(
        case,
        outcome,
        before,
        snapshot(folder),
        canary=canary,
        annotations=annotations,
        report=argv[1] if report else None,
    )


def judge(
    case: HostileCase,
    outcome: Outcome,
    before: dict[str, str],
    after: dict[str, str],
    canary: bool,
    annotations: bool = False,
    report: str | None = None,
) -> list[str]:
    """Every promise ``outcome`` broke, given the case folder's files before and after. With
    ``annotations``, stdout may hold the GitHub reporter's own commands, whose properties cannot
    hold a colon; any other line starting with ``::`` came from a file. With ``report`` (the file
    whose JSON report was asked for), a run that refused nothing reports every model as read,
    and a refusal is one line naming that file."""
    if outcome.code is None:
        return [f"hung for {HANG_SECONDS:g} s"]
    broken = []
    if outcome.code not in case.codes:
        broken.append(f"exit code {outcome.code} (expected {sorted(case.codes)})")
    if "Traceback" in outcome.out + outcome.err:
        broken.append(f"traceback: {outcome.err[-600:]!r}")
    for line in outcome.err.splitlines():
        if not line.startswith("bncheck: "):
            broken.append(f"stderr line not from bncheck: {line[:200]!r}")
            break
    for stream, text in (("stdout", outcome.out), ("stderr", outcome.err)):
        for line in text.split("\n"):
            if line.startswith("::") and not (
                annotations and stream == "stdout" and ANNOTATION.match(line)
            ):
                broken.append(f"{stream} line starts with '::': {line[:200]!r}")
            if HIDDEN.search(line):
                broken.append(f"{stream} line holds a control character: {line[:200]!r}")
    changed = sorted(
        name
        for name in set(before) | set(after)
        if before.get(name) != after.get(name) and not Path(name).name.startswith("OUT")
    )
    if changed:
        broken.append(f"files changed or created: {changed[:10]}")
    if canary:
        broken.append("the canary was written: code from the file ran or wrote")
    if outcome.peak_rss_mib > case.max_rss_mib:
        broken.append(f"peak memory {outcome.peak_rss_mib:.0f} MiB > {case.max_rss_mib:g}")
    if "MemoryError" in outcome.out + outcome.err:
        broken.append("a MemoryError was shown")
    if report is not None and outcome.code == 3:
        lines = outcome.err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith(f"bncheck: error: {report}: "):
            broken.append(f"not one line naming {report}: {outcome.err[:300]!r}")
    if report is not None and outcome.code in (0, 1):
        try:
            errors = [model["error"] for model in json.loads(outcome.out)["models"]]
        except (ValueError, KeyError, TypeError):
            broken.append(f"stdout is not a JSON report: {outcome.out[:200]!r}")
        else:
            if any(error is not None for error in errors):
                broken.append(f"exit code {outcome.code} with a model not read: {errors}")
    return broken


def test_the_judge_sees_every_broken_promise() -> None:
    case = HostileCase("probe", lambda _: [], codes=frozenset({3}))
    clean = Outcome(3, "", "bncheck: error: x: unreadable\n", 0.1, 80.0)
    assert judge(case, clean, {"a": "1"}, {"a": "1", "OUT.h5": "2"}, canary=False) == []
    hostile_outcome = Outcome(
        0, "::error::owned\nname\x1b[2J\n", "Traceback (most recent call last)\n", 0.1, 900.0
    )
    broken = judge(case, hostile_outcome, {"a": "1"}, {"a": "2", "b": "3"}, canary=True)
    assert [problem.split(" ")[0] for problem in broken] == [
        "exit",
        "traceback:",
        "stderr",
        "stdout",
        "stdout",
        "files",
        "the",
        "peak",
    ]
    github = Outcome(
        1, "::error file=m.h5,title=BN001 x::a \\x3a:error::b\n::warning::c\n", "", 0, 0
    )
    broken = judge(case, github, {}, {}, canary=False, annotations=True)
    assert broken == [
        "exit code 1 (expected [3])",
        "stdout line starts with '::': '::warning::c'",
    ]
    hung = Outcome(None, "", "", HANG_SECONDS, 0.0)
    assert judge(case, hung, {}, {}, canary=False) == [f"hung for {HANG_SECONDS:g} s"]
    read = Outcome(1, '{"models": [{"error": null}]}', "", 0.1, 80.0)
    unread = Outcome(1, '{"models": [{"error": "x"}]}', "", 0.1, 80.0)
    assert judge(case, read, {}, {}, canary=False, report="m.pt") == ["exit code 1 (expected [3])"]
    assert judge(case, unread, {}, {}, canary=False, report="m.pt")[1:] == [
        "exit code 1 with a model not read: ['x']"
    ]
    assert judge(case, Outcome(1, "", "", 0.1, 80.0), {}, {}, canary=False, report="m.pt")[1:] == [
        "stdout is not a JSON report: ''"
    ]
    named = Outcome(3, "", "bncheck: error: m.pt: refused\n", 0.1, 80.0)
    assert judge(case, named, {}, {}, canary=False, report="m.pt") == []
    other = Outcome(
        3, "", "bncheck: error: x.pt: refused\nbncheck: error: MemoryError\n", 0.1, 80.0
    )
    assert judge(case, other, {}, {}, canary=False, report="m.pt") == [
        "a MemoryError was shown",
        "not one line naming m.pt: "
        "'bncheck: error: x.pt: refused\\nbncheck: error: MemoryError\\n'",
    ]


def _runnable(case: HostileCase) -> bool:
    module = {"tensorflow": "tensorflow", "onnxruntime": "onnxruntime", "torch": "torch"}
    needed = module.get(case.needs)
    return needed is None or importlib.util.find_spec(needed) is not None


#: The cases whose command loads TensorFlow start it in a process each, seconds apiece: they run
#: with the tests marked slow, the others by default.
GROUPS = [
    pytest.param(lambda case: case.needs != "tensorflow", id="without-tensorflow"),
    pytest.param(lambda case: case.needs == "tensorflow", id="tensorflow", marks=pytest.mark.slow),
]


@pytest.mark.parametrize("group", GROUPS)
def test_every_hostile_case_keeps_every_promise(
    group: Callable[[HostileCase], bool], tmp_path: Path
) -> None:
    chosen = [case for case in CASES if group(case)]
    cases = [case for case in chosen if _runnable(case)]
    missing = sorted({case.needs for case in chosen} - {case.needs for case in cases})
    # The test extra installs every framework: a case that cannot run is a broken install.
    assert not missing, f"cannot run the cases that need {missing}"
    if not cases:
        pytest.skip("the hostile corpus is empty")
    roots = [tmp_path / f"{index:03d}" for index in range(len(cases))]
    # Twice the cores: some cases only wait (a hang stopped at a time limit).
    with ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 2)) as pool:
        results = list(pool.map(broken_promises, cases, roots))
    failures = [
        f"{case.name}: {'; '.join(broken)}"
        for case, broken in zip(cases, results, strict=True)
        if broken
    ]
    assert not failures, f"{len(failures)} of {len(cases)} cases broke a promise:\n" + "\n".join(
        failures
    )
