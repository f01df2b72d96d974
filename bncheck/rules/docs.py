"""A rule's documentation, read from its module docstring.

The docstring is written for people and keeps a light structure so that ``bncheck rules``,
``bncheck explain`` and the SARIF report can use its parts::

    One-line summary.

    What it means and why it matters (one or more paragraphs).

    Why it happens: ...          (optional)

    How to fix: ...

    Options:                     (when the rule has options)
      name: what it means.

    Passing: an example that passes.
    Failing: an example that is reported.

A section starts with its label at the beginning of a line and runs to the next label.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Mapping

from bncheck.model import KERAS_WORDS, Vocabulary
from bncheck.records import record
from bncheck.rules import Needs, Rule

SECTIONS = ("Why it happens", "How to fix", "Options", "Passing", "Failing")
"""Section labels, in the order they appear."""

REQUIRED_SECTIONS = ("How to fix", "Passing", "Failing")

NEEDS_MEANING: Mapping[Needs, str] = {
    "static": "the saved file alone",
    "model": "the saved file alone, as a whole: what it holds and lacks",
    "probe": "running the model: inspect --probe or --data",
    "checkpoint": "the variables of a checkpoint or SavedModel",
}
"""What each kind of rule input means, for people."""

_LABEL = re.compile(rf"^({'|'.join(map(re.escape, SECTIONS))}):\s*(.*)$")
_OPTION = re.compile(r"^\s+([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$")


@record
class RuleDoc:
    """The parts of a rule's docstring."""

    summary: str
    """The first line: what the rule reports, in one sentence."""
    description: str
    """The paragraphs between the summary and the first section: what it means, why it matters."""
    sections: Mapping[str, str]
    """Text of each section present, by label, in docstring order; continuation lines dedented."""
    options: Mapping[str, str]
    """Each documented option's description, from the ``Options`` section."""

    @property
    def text(self) -> str:
        """The whole documentation as plain text."""
        parts = [self.summary]
        if self.description:
            parts.append(self.description)
        parts += [_section_text(label, body) for label, body in self.sections.items()]
        return "\n\n".join(parts)


def rule_doc(rule: Rule) -> RuleDoc:
    lines = inspect.cleandoc(rule.__doc__ or "").splitlines()
    summary = lines[0].strip() if lines else ""
    description: list[str] = []
    sections: dict[str, list[str]] = {}
    current = description
    for line in lines[1:]:
        match = _LABEL.match(line)
        if match:
            current = sections.setdefault(match.group(1), [])
            line = match.group(2)
        current.append(line)
    options: dict[str, str] = {}
    for line in sections.get("Options", []):
        option = _OPTION.match(line)
        if option:
            options[option.group(1)] = option.group(2).strip()
        elif line.strip() and options:
            last = next(reversed(options))
            options[last] = f"{options[last]} {line.strip()}"
    return RuleDoc(
        summary=summary,
        description=_paragraphs(description),
        sections={label: _paragraphs(body) for label, body in sections.items()},
        options=options,
    )


#: The terminal width ``bncheck explain`` and ``bncheck rules`` fit.
WIDTH = 100
_MARKUP = re.compile(r"``(.+?)``|`(.+?)`|\*\*(.+?)\*\*", re.DOTALL)


def plain(text: str) -> str:
    """Docstring markup (````code````, ``**bold**``) as plain text."""
    return _MARKUP.sub(lambda m: next(group for group in m.groups() if group is not None), text)


_OPTION_ITEM = re.compile(r"^  [A-Za-z_][A-Za-z0-9_]*( \(default [^)]*\))?: ")


def reflow(text: str, width: int = WIDTH) -> str:
    """Plain text wrapped to ``width``: paragraphs and ``- `` list items are refilled (their
    continuation lines are indented), option lines (``  name (default X): text``) hang under
    their name."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        items: list[list[str]] = []
        for line in block.splitlines():
            if not items or line.startswith("- ") or _OPTION_ITEM.match(line):
                items.append([line])
            else:
                items[-1].append(line.strip())
        out.append("\n".join(_fill(item, width) for item in items))
    return "\n\n".join(out)


def _fill(item: list[str], width: int) -> str:
    first = item[0]
    if first.startswith("- "):
        indent, hang = "", "  "
    elif _OPTION_ITEM.match(first):
        indent, hang = "  ", "      "
    else:
        indent = hang = ""
    return textwrap.fill(
        " ".join([first.strip(), *item[1:]]),
        width=width,
        initial_indent=indent,
        subsequent_indent=hang,
        break_long_words=False,
        break_on_hyphens=False,
    )


def explain(rule: Rule, words: Vocabulary = KERAS_WORDS) -> str:
    """The text ``bncheck explain`` prints: identity, defaults, the documentation, and where to
    configure the rule, as plain text that fits a 100-column terminal, in ``words``."""
    doc = rule_doc(rule)
    needs = NEEDS_MEANING.get(rule.NEEDS, rule.NEEDS)
    head = [
        f"{rule.ID} {rule.NAME}",
        f"default severity: {rule.DEFAULT_SEVERITY}; needs: {rule.NEEDS} ({needs})",
    ]
    if words is not KERAS_WORDS:
        head.append(words_line(words))
    lines = [doc.summary]
    if doc.description:
        lines += ["", doc.description]
    for label, body in doc.sections.items():
        if label == "Options":
            body = "\n".join(
                f"{name}{default_note(rule, name)}: {text}" for name, text in doc.options.items()
            )
        lines += ["", _section_text(label, body)]
    settable = ", ".join(["severity", *rule.OPTIONS])
    lines += ["", f"Configure: [tool.bncheck.rules.{rule.ID}] ({settable})."]
    tail = f'Turn off: --ignore {rule.ID}, or ignore = ["{rule.ID}"] in the configuration.'
    text = plain(words.translate("\n".join(lines)))
    return "\n".join(head) + "\n\n" + reflow(text) + "\n" + tail + "\n"


def words_line(words: Vocabulary) -> str:
    """What ``explain`` says when it speaks a framework's words other than Keras's."""
    arrays = ", ".join(words.array(name) for name in ARRAY_ORDER)
    momentum = f"momentum is {words.momentum_meaning}"
    if not words.momentum_keeps_history:
        momentum += "; figures quoted from Keras models keep Keras's momentum"
    return reflow(
        f"words: {words.framework}'s: {arrays}; {words.training_call} and "
        f"{words.inference_call}; {momentum}"
    )


ARRAY_ORDER = ("moving_mean", "moving_variance", "gamma", "beta")


def default_note(rule: Rule, option: str) -> str:
    """`` (default X)`` for an option the rule has, empty otherwise."""
    return f" (default {rule.OPTIONS[option]:g})" if option in rule.OPTIONS else ""


def _section_text(label: str, body: str) -> str:
    """A section as the docstring writes it: options one per indented line, prose after the
    label."""
    if label == "Options":
        return f"{label}:\n" + "\n".join(f"  {line}" for line in body.splitlines())
    return f"{label}: {body}"


def _paragraphs(lines: list[str]) -> str:
    """Join the lines of a block, dedented, without leading or trailing blank lines."""
    return inspect.cleandoc("\n".join(lines)).strip("\n")
