"""Findings, per-model results, the report, and the exit code they imply."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from bncheck.model import ModelDescription
from bncheck.records import record

if TYPE_CHECKING:
    from bncheck.probe.results import ProbeResult


class Severity(enum.IntEnum):
    """How bad a finding is; higher is worse."""

    INFO = 1
    WARNING = 2
    ERROR = 3

    def __str__(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.upper()]
        except KeyError:
            choices = ", ".join(str(s) for s in cls)
            raise ValueError(f"unknown severity {text!r} (choose from {choices})") from None


class Escalation(enum.Enum):
    """A rule's statement that this occurrence is worse or milder than the rule's usual case.

    The rule only says *that*; configuration decides the resulting severity (see
    ``Settings.severity_for``).
    """

    SEVERE = "severe"
    """One level above the configured severity."""
    MITIGATED = "mitigated"
    """Information only: something else in the model neutralises the problem."""


@record
class Problem:
    """What a rule yields: a fact about a layer or model, without rule ID or severity."""

    message: str
    """One sentence a user can act on."""
    layer: str | None = None
    """Path of the layer concerned; ``None`` for model-level problems."""
    details: Mapping[str, Any] = field(default_factory=dict)
    """Measured values behind the message, JSON-serialisable."""
    escalation: Escalation | None = None
    """Whether this occurrence is worse or milder than the rule's usual case."""


@record
class Finding:
    """A problem stamped by the runner with its rule and configured severity."""

    rule: str
    """Stable rule ID, e.g. ``BN001``."""
    name: str
    """Stable rule name, e.g. ``untouched-moving-stats``."""
    severity: Severity
    layer: str | None
    message: str
    details: Mapping[str, Any]


@record
class ModelResult:
    """The outcome for one input path: a description and findings, or a read error."""

    path: str
    format: str | None
    """Detected format; ``None`` when the file could not be identified."""
    description: ModelDescription | None = None
    findings: tuple[Finding, ...] = ()
    error: str | None = None
    """One-line reason the input could not be read, or, with its description kept, why its probe
    failed; ``None`` on success."""
    probe: ProbeResult | None = None
    """What the probe measured, or why it was skipped; ``None`` when no probe was asked for."""

    @property
    def unreadable(self) -> bool:
        """The input could not be read: there is only its error."""
        return self.error is not None and self.description is None

    @property
    def probe_failed(self) -> bool:
        """The model was read and judged statically, and its probe failed (``error`` says why)."""
        return self.error is not None and self.description is not None


class FailOn(enum.Enum):
    """The lowest severity that fails the run (``--fail-on``)."""

    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    NEVER = "never"

    @property
    def threshold(self) -> Severity | None:
        return None if self is FailOn.NEVER else Severity[self.name]

    def fails(self, severity: Severity) -> bool:
        """Whether a finding of this severity fails the run."""
        threshold = self.threshold
        return threshold is not None and severity >= threshold


class ExitCode(enum.IntEnum):
    """The process exit code a report implies."""

    OK = 0
    """Nothing at or above ``--fail-on``."""
    FINDINGS = 1
    """Findings at or above ``--fail-on``."""
    USAGE = 2
    """Bad command line or configuration."""
    UNREADABLE = 3
    """An input could not be read, or a model's probe could not finish."""


@record
class Report:
    """Everything one run found, ready to render."""

    models: tuple[ModelResult, ...]
    fail_on: FailOn

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every model's findings, in input order."""
        return tuple(f for model in self.models for f in model.findings)

    def count(self, severity: Severity) -> int:
        """How many findings have this severity."""
        return sum(1 for f in self.findings if f.severity == severity)

    @property
    def unreadable_count(self) -> int:
        """Inputs that could not be read."""
        return sum(1 for model in self.models if model.unreadable)

    @property
    def probe_failed_count(self) -> int:
        """Models that were read and whose probe failed: their static report stands, and their
        error says why the probe did not finish."""
        return sum(1 for model in self.models if model.probe_failed)

    @property
    def model_count(self) -> int:
        """Inputs that were read: the models the findings come from."""
        return sum(1 for model in self.models if model.description is not None)

    @property
    def layer_count(self) -> int:
        """BatchNorm layers described over all models."""
        return sum(m.description.layer_count for m in self.models if m.description is not None)

    def failing(self) -> tuple[Finding, ...]:
        """Findings at or above ``fail_on``."""
        return tuple(f for f in self.findings if self.fail_on.fails(f.severity))

    @property
    def exit_code(self) -> ExitCode:
        """The worst outcome over all inputs: unreadable or not probed as asked, then failing
        findings, then OK."""
        if any(m.error is not None for m in self.models):
            return ExitCode.UNREADABLE
        if self.failing():
            return ExitCode.FINDINGS
        return ExitCode.OK
