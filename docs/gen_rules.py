"""Write ``docs/rules.md`` from the rules' own docstrings (the text ``bncheck explain`` prints).

    python docs/gen_rules.py            # rewrite docs/rules.md
    python docs/gen_rules.py --check    # exit 1 if docs/rules.md is stale

``tests/test_rule_docs.py`` runs the check, so the reference cannot drift from the rules.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "rules.md"


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from bncheck.rules import RULES
    from bncheck.rules.docs import NEEDS_MEANING, default_note, plain, rule_doc

    lines = [
        "# Rules",
        "",
        "Generated from the rules' docstrings by `python docs/gen_rules.py`; `bncheck explain "
        "RULE` prints the same text. Rule IDs are stable. Severities and options are set in the "
        "[configuration](configuration.md).",
        "",
        "| ID | name | default | needs | what it reports |",
        "| --- | --- | --- | --- | --- |",
    ]
    for rule in RULES.values():
        doc = rule_doc(rule)
        lines.append(
            f"| [{rule.ID}](#{rule.ID.lower()}-{rule.NAME}) | `{rule.NAME}` | "
            f"{rule.DEFAULT_SEVERITY} | {rule.NEEDS} | {plain(doc.summary)} |"
        )
    lines += ["", "What each kind of rule needs:", ""]
    lines += [f"- `{needs}`: {meaning}" for needs, meaning in NEEDS_MEANING.items()]
    for rule in RULES.values():
        doc = rule_doc(rule)
        lines += [
            "",
            f"## {rule.ID} {rule.NAME}",
            "",
            f"Default severity: {rule.DEFAULT_SEVERITY}. Needs: {rule.NEEDS}.",
            "",
            f"**{doc.summary}**",
        ]
        if doc.description:
            lines += ["", doc.description]
        for label, body in doc.sections.items():
            if label == "Options":
                lines += ["", "Options:", ""]
                lines += [
                    f"- `{name}`{default_note(rule, name)}: {text}"
                    for name, text in doc.options.items()
                ]
            else:
                lines += ["", f"*{label}:* {body}"]
    return "\n".join(lines).replace("``", "`") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is stale")
    text = render()
    if parser.parse_args().check:
        if not TARGET.exists() or TARGET.read_text() != text:
            print(f"{TARGET} is stale: run python docs/gen_rules.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
