"""Text from a file, made safe to show: on a terminal, in a CI log, in a report.

Layer names, class names, pickle globals, paths and error reasons quoting a file come from
whoever made the file. Shown raw, a newline forges report lines, an escape sequence rewrites the
terminal, and a line starting with ``::`` is a GitHub Actions workflow command (``::add-mask::``,
``::error::``). ``shown`` is the one escaping every reporter applies to such text; the structured
formats (JSON, SARIF, JUnit) keep the exact text, their encoders escape it.
"""

from __future__ import annotations

import re

#: Characters shown as escapes: C0 controls, DEL, C1 controls, the Unicode line and paragraph
#: separators, and the bidirectional embeddings, overrides and isolates that reorder what a
#: reader sees.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
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
