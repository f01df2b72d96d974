"""Ctrl-C and SIGTERM reach the command even when the code running at that moment swallows them."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from bncheck import interrupts
from tests.conftest import FIXTURES


class _Swallows:
    """Code that ignores exceptions: Python reports one raised in ``__del__`` and goes on."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        signal.raise_signal(self.signum)


@pytest.mark.parametrize(
    ("signum", "raised"),
    [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)],
    ids=["int", "term"],
)
def test_a_swallowed_signal_is_raised_again_by_check(
    monkeypatch: pytest.MonkeyPatch, signum: int, raised: type[BaseException]
) -> None:
    swallowed: list[type[BaseException] | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))
    with interrupts.handled():
        doomed = _Swallows(signum)
        del doomed  # the handler raises in __del__, and Python swallows it
        assert swallowed == [raised]
        with pytest.raises(raised) as caught:
            interrupts.check()
        assert type(caught.value) is raised
        interrupts.check()  # raised once: nothing is left


def test_a_signal_the_command_met_is_one_line_and_not_raised_again(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with interrupts.handled():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert interrupts.answered(terminated=False) == 130
        interrupts.check()
    assert capsys.readouterr().err == "bncheck: interrupted\n"


def test_a_signal_after_writing_says_what_was_written(capsys: pytest.CaptureFixture[str]) -> None:
    with interrupts.handled():
        interrupts.written("out.keras")
        with pytest.raises(interrupts.Terminated):
            signal.raise_signal(signal.SIGTERM)
        assert interrupts.answered(terminated=True) == 143
    assert capsys.readouterr().err == "bncheck: terminated after writing out.keras\n"
    with interrupts.handled():  # the next command has written nothing
        assert interrupts.answered(terminated=False) == 130
    assert capsys.readouterr().err == "bncheck: interrupted\n"


def test_once_held_a_signal_is_recorded_only() -> None:
    with interrupts.handled():
        interrupts.hold()
        signal.raise_signal(signal.SIGTERM)
        interrupts.check()


def test_the_handlers_are_put_back_and_nothing_is_left_pending() -> None:
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with interrupts.handled():
        assert signal.getsignal(signal.SIGINT) is not before[0]
        with pytest.raises(interrupts.Terminated):
            signal.raise_signal(signal.SIGTERM)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    interrupts.check()  # the SIGTERM went with the command


def test_outside_the_main_thread_nothing_changes() -> None:
    seen: list[object] = []

    def run() -> None:
        with interrupts.handled():
            seen.append(signal.getsignal(signal.SIGINT))

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert seen == [before]


#: A static inspection that passes: exit code 0.
HEALTHY = FIXTURES / "keras3" / "healthy_cnn.keras"


def _console(patch: str) -> subprocess.CompletedProcess[str]:
    """``bncheck inspect HEALTHY`` as the console script runs it, after ``patch``."""
    code = "\n".join(
        [
            "import os, signal, sys",
            "import bncheck.__main__ as entry",
            "from bncheck import interrupts",
            patch,
            f"sys.argv = ['bncheck', 'inspect', {str(HEALTHY)!r}]",
            "entry.main()",
        ]
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("signum", "line", "exit_code"),
    [(signal.SIGINT, "bncheck: interrupted", 130), (signal.SIGTERM, "bncheck: terminated", 143)],
    ids=["int", "term"],
)
def test_a_signal_while_bncheck_imports_is_one_line(signum: int, line: str, exit_code: int) -> None:
    """The imports take a fraction of a second: a signal then is answered like any other."""
    patch = "\n".join(
        [
            "import importlib.abc",
            "class Stop(importlib.abc.MetaPathFinder):",
            "    def find_spec(self, name, path, target=None):",
            "        if name == 'bncheck.cli':",
            f"            signal.raise_signal({int(signum)})",
            "        return None",
            "sys.meta_path.insert(0, Stop())",
        ]
    )
    done = _console(patch)
    assert (done.returncode, done.stderr) == (exit_code, line + "\n")


def test_a_signal_once_the_command_has_ended_changes_nothing() -> None:
    """The report is out: the clean-up finishes and the command's exit code stands."""
    patch = "\n".join(
        [
            "held = interrupts.hold",
            "def hold():",
            "    held()",
            "    signal.raise_signal(signal.SIGINT)",
            "interrupts.hold = hold",
        ]
    )
    done = _console(patch)
    assert (done.returncode, done.stderr) == (0, "")
    assert "healthy_cnn.keras" in done.stdout
