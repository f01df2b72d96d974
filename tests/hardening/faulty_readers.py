"""Readers that fail the way libhdf5 can, for the containment tests: each reads the file with
bncheck's own reader unless its name asks for a crash, a hang or a memory blow-up.

They live in a module of their own so that a worker process can import them by name.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bncheck.model import ModelDescription
from bncheck.readers import read_model


def faulty_read_model(path: str) -> ModelDescription:
    name = Path(path).name
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        while True:
            time.sleep(1)
    if name.startswith("hog"):
        hoard = []
        while True:
            hoard.append(bytearray(64 << 20))
    return read_model(path)
