"""The hostile corpus: crafted files that attack each of bncheck's promises.

Each module of this package covers one family of formats and exposes ``CASES``, a list of
``HostileCase``. A case writes its files into an empty folder at test time (nothing large is
committed) and names the command to run on them; ``tests/hardening/test_hostile_corpus.py`` runs
every case in a child process under a memory cap and a time limit and checks every promise:

- the exit code is one of ``codes``, and an error is one line on stderr, never a traceback;
- no file other than the command's OUT changes, the inputs' bytes included;
- no code from the file runs (a case that tries leaves ``CANARY`` behind if it succeeds);
- no output line starts with ``::`` (a GitHub Actions command) or holds a control character;
- peak memory stays under ``max_rss_mib`` and the run ends within the time limit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

#: What no output line may hold raw: control characters other than tab and newline, the Unicode
#: line and paragraph separators, and every format character (bidi controls, zero widths, ...).
HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029"
    + "".join(chr(c) for c in range(0xA0, 0xE0080) if unicodedata.category(chr(c)) == "Cf")
    + "]"
)

#: A file a hostile case tries to create by running code or writing where it must not; its
#: existence after the run means a promise broke.
CANARY = "CANARY"


@dataclass(frozen=True)
class HostileCase:
    name: str
    """Unique, says what the attack is: ``h5-external-link-into-input``."""
    build: Callable[[Path], Sequence[str]]
    """Writes the case's files into the (empty) folder and returns bncheck's arguments, with
    paths inside that folder. A write target named ``OUT`` in the folder may change."""
    codes: frozenset[int] = frozenset({1, 3})
    """The exit codes that keep the promises for this case."""
    needs: str = "core"
    """What the command needs installed: ``core``, ``tensorflow``, ``onnxruntime`` or ``torch``."""
    max_rss_mib: float = 500.0
    """Peak resident memory of the whole run (TensorFlow alone takes more: raise it for those)."""
