"""Ctrl-C and SIGTERM reach the command even when the code running at that moment swallows them."""

from __future__ import annotations

import signal
import sys
import threading

import pytest

from bncheck import interrupts


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


def test_a_signal_the_command_met_is_not_raised_again() -> None:
    with interrupts.handled():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        interrupts.answered()
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
