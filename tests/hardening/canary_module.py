"""A function a hostile model configuration names by module (the CVE-2025-1550 shape): calling it
creates the file named by ``BNCHECK_CANARY``. Nothing in bncheck may ever call it."""

from __future__ import annotations

import os


def touch(value: object) -> object:
    open(os.environ["BNCHECK_CANARY"], "w").close()  # noqa: SIM115
    return value
