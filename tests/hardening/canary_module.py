"""A function a hostile model configuration names by module (the CVE-2025-1550 shape): calling it
creates the file named by ``BNCHECK_CANARY``. Nothing in bncheck may ever call it."""

from __future__ import annotations

import os


def touch(value: object) -> object:
    open(os.environ["BNCHECK_CANARY"], "w").close()  # noqa: SIM115
    return value


class Touches:
    """Creates the canary when an unpickler rebuilds it, whichever way it tries: by calling the
    class, by ``__setstate__``, or by ``__reduce__``'s function."""

    def __init__(self, *arguments: object) -> None:
        touch(arguments)

    def __setstate__(self, state: object) -> None:
        touch(state)

    def __reduce__(self) -> tuple[object, ...]:
        return Touches, ("reduce",), {"state": 1}
