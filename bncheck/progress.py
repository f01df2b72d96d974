"""Progress on standard error, for people watching a terminal; silent anywhere else."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from bncheck.text import shown


class Progress:
    """One status line, rewritten in place; nothing at all unless the stream is a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream if stream is not None else sys.stderr
        # No stream at all when the process started with stderr closed.
        self.enabled = self._stream is not None and self._stream.isatty()
        self._width = 0
        self._started = time.perf_counter()
        self._label = ""

    def step(self, text: str) -> None:
        """Show what is happening now (its names may come from a file: shown escaped)."""
        self._show(shown(text))

    def start_batches(self, label: str) -> None:
        self._label = label
        self._started = time.perf_counter()

    def batch(self, done: int, total: int | None, samples: int | None = None) -> None:
        """Show batches done (of ``total`` when known), the throughput so far (samples per
        second when the ``samples`` done are given, else batches per second) and, with
        ``total``, the time left at that rate."""
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self._started, 1e-9)
        of = f"/{total}" if total is not None else ""
        if samples is None:
            rate = f"{done / elapsed:.1f} batches/s"
        else:
            per_second = samples / elapsed
            rate = f"{per_second:,.0f}" if per_second >= 100 else f"{per_second:.1f}"
            rate += " samples/s"
        left = ""
        if total is not None and 0 < done < total:
            left = f", ETA {_clock(elapsed / done * (total - done))}"
        self._show(f"{self._label}: batch {done}{of}, {rate}{left}")

    def done(self) -> None:
        """Erase the status line."""
        if self.enabled and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0

    def _show(self, text: str) -> None:
        if not self.enabled:
            return
        padding = " " * max(0, self._width - len(text))
        self._stream.write(f"\r{text}{padding}")
        self._stream.flush()
        self._width = len(text)


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on."""
    minutes, second = divmod(round(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"
