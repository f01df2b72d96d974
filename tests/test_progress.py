"""Progress goes to a terminal only, and erases itself."""

from __future__ import annotations

import io

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
