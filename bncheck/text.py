"""Text from a file, made safe to show: on a terminal, in a CI log, in a report.

Layer names, class names, pickle globals, paths and error reasons quoting a file come from
whoever made the file. Shown raw, a newline forges report lines, an escape sequence rewrites the
terminal, and a line starting with ``::`` is a GitHub Actions workflow command (``::add-mask::``,
``::error::``). ``shown`` is the one escaping every reporter applies to such text; JSON and SARIF
keep the exact text, which their encoders escape onto one line. JUnit XML keeps newlines as
they are in its text, and the tools that show it print that text: it is escaped with ``shown``.
"""

from __future__ import annotations

import re

#: Characters shown as escapes: every control (Cc: C0, DEL, C1), the Unicode line and paragraph
#: separators (Zl, Zp), and every format character (Cf): the bidirectional marks, embeddings,
#: overrides and isolates that reorder what a reader sees, zero-width characters, the byte-order
#: mark, invisible operators and tags. The ranges are Unicode 15's Cf, written out so that
#: importing this module costs nothing; a test checks them against ``unicodedata``.
_CONTROL = re.compile(
    "[\x00-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    "\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: A workflow command at the start of a line (the runner trims leading blanks first), and the
#: runner's older ``##[command]`` form, which it finds anywhere in a line.
_COMMAND = re.compile(r"^(\s*):(?=:)|#(?=#\[)")


def shown(text: str) -> str:
    """``text`` with every control character as an escape (``\\n``, ``\\x1b``, ``\\u2028``), and
    with no way to start a GitHub Actions command: a leading ``::`` shows its first colon as
    ``\\x3a``, ``##[`` its first ``#`` as ``\\x23``."""
    text = _CONTROL.sub(_escape, text)
    return _COMMAND.sub(lambda m: (m.group(1) or "") + f"\\x{ord(m.group(0)[-1]):02x}", text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
