"""Progress goes to a terminal only, and erases itself."""

from __future__ import annotations

import io
import time

import pytest

from bncheck.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_silent_when_not_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(stream)
    progress.step("loading")
    progress.start_batches("recalibrating")
    progress.batch(3, 10)
    progress.done()
    assert stream.getvalue() == ""


def test_terminal_shows_steps_and_rates() -> None:
    stream = Terminal()
    progress = Progress(stream)
    progress.step("loading with Keras")
    progress.start_batches("recalibrating")
    progress.batch(3, 10)
    shown = stream.getvalue()
    assert "\rloading with Keras" in shown
    assert "recalibrating: batch 3/10, " in shown and "batches/s" in shown
    progress.done()
    assert stream.getvalue().endswith("\r")


def test_samples_per_second_and_time_left(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    stream = Terminal()
    progress = Progress(stream)
    progress.start_batches("estimating")
    clock[0] += 10.0  # 4 batches of 32 in 10 s
    progress.batch(4, 20, samples=128)
    # 16 batches to go at 2.5 s a batch.
    assert stream.getvalue().endswith("\restimating: batch 4/20, 12.8 samples/s, ETA 0:40")
    clock[0] += 3590.0  # an hour for 5 batches: 1995 to go at 720 s each
    progress.batch(5, 2000, samples=409_600)
    assert stream.getvalue().endswith("\restimating: batch 5/2000, 114 samples/s, ETA 399:00:00")
    progress.batch(20, 20, samples=640)
    assert "ETA" not in stream.getvalue().split("\r")[-1]
    progress.batch(5, None, samples=160)
    assert "ETA" not in stream.getvalue().split("\r")[-1]
