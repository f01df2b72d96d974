"""What to check and how strictly: rule defaults overridden by configuration and flags."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import field, replace
from fnmatch import fnmatchcase

from bncheck.errors import UsageError
from bncheck.findings import Escalation, FailOn, Severity
from bncheck.records import record
from bncheck.rules import RULES, by_name_or_id


@record
class RuleSettings:
    """One rule's configuration."""

    enabled: bool
    severity: Severity
    """Severity of the rule's usual case; escalated or mitigated problems derive from it."""
    options: Mapping[str, float]
    """Every option of the rule, defaults filled in."""


@record
class LayerIgnore:
    """Rules turned off for the layers whose path matches a glob."""

    pattern: str
    """Glob over the layer path (``*`` also matches ``/``), e.g. ``*/backbone/*``."""
    rules: frozenset[str]
    """IDs of the rules ignored on those layers."""


def _rule_defaults() -> dict[str, RuleSettings]:
    return {
        rule_id: RuleSettings(True, rule.DEFAULT_SEVERITY, dict(rule.OPTIONS))
        for rule_id, rule in RULES.items()
    }


@record
class Settings:
    """Everything configuration can change about a run."""

    fail_on: FailOn = FailOn.ERROR
    """The lowest severity that makes the exit code 1."""
    rules: Mapping[str, RuleSettings] = field(default_factory=_rule_defaults)
    """Per-rule settings by rule ID; every registered rule is present."""
    layer_ignores: tuple[LayerIgnore, ...] = ()
    """Rules turned off on some layers only."""

    def severity_for(self, rule_id: str, escalation: Escalation | None) -> Severity:
        base = self.rules[rule_id].severity
        if escalation is Escalation.MITIGATED:
            return Severity.INFO
        if escalation is Escalation.SEVERE:
            return Severity(min(base + 1, Severity.ERROR))
        return base

    def enabled(self, rule_id: str) -> bool:
        return self.rules[rule_id].enabled

    def ignored_at(self, rule_id: str, layer: str | None) -> bool:
        """Whether the rule is turned off on this layer (never for model-level problems)."""
        return layer is not None and any(
            rule_id in ignore.rules and fnmatchcase(layer, ignore.pattern)
            for ignore in self.layer_ignores
        )

    def with_overrides(
        self,
        *,
        select: Iterable[str] = (),
        ignore: Iterable[str] = (),
        severities: Mapping[str, str] | None = None,
        options: Mapping[str, Mapping[str, object]] | None = None,
        layer_ignores: Mapping[str, Iterable[str]] | None = None,
    ) -> Settings:
        """A copy with rules selected, ignored, re-graded or re-tuned. ``select`` (when given)
        enables only the listed rules; ``ignore`` then disables rules; ``layer_ignores`` maps a
        layer glob to the rules ignored there. Rules are named by ID or name; unknown rules,
        options or values raise ``UsageError``."""
        rules = dict(self.rules)
        selected = {resolve_rule(key) for key in select}
        if selected:
            rules = {rid: replace(rs, enabled=rid in selected) for rid, rs in rules.items()}
        for key in ignore:
            rid = resolve_rule(key)
            rules[rid] = replace(rules[rid], enabled=False)
        for key, text in (severities or {}).items():
            rid = resolve_rule(key)
            try:
                rules[rid] = replace(rules[rid], severity=Severity.parse(text))
            except ValueError as exc:
                raise UsageError(f"{rid}: {exc}") from None
        for key, values in (options or {}).items():
            rid = resolve_rule(key)
            merged = dict(rules[rid].options)
            for option, value in values.items():
                if option not in merged:
                    known = ", ".join(sorted(merged)) or "none"
                    raise UsageError(f"{rid} has no option {option!r} (options: {known})")
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise UsageError(f"{rid} option {option!r} must be a number, not {value!r}")
                merged[option] = float(value)
            rules[rid] = replace(rules[rid], options=merged)
        ignores = self.layer_ignores + tuple(
            LayerIgnore(pattern, frozenset(resolve_rule(key) for key in keys))
            for pattern, keys in (layer_ignores or {}).items()
        )
        return replace(self, rules=rules, layer_ignores=ignores)


def resolve_rule(key: str) -> str:
    rule = by_name_or_id(key)
    if rule is None:
        raise UsageError(f"unknown rule {key!r} (see 'bncheck rules')")
    return rule.ID
