"""``bncheck`` and ``python -m bncheck``: the command line's own process.

Ctrl-C and SIGTERM are answered in one line from before bncheck's imports (which take a
fraction of a second), and once the command has ended they no longer interrupt its clean-up.
"""

from __future__ import annotations

import sys

from bncheck import interrupts


def main() -> None:
    interrupts.install()
    try:
        try:
            from bncheck.cli import run

            code = run()
        finally:
            interrupts.hold()  # the command has ended: a signal now is recorded only
    except KeyboardInterrupt as exc:  # before the command could answer it
        code = interrupts.answered(isinstance(exc, interrupts.Terminated))
    interrupts.ignore()
    sys.exit(code)


if __name__ == "__main__":
    main()
