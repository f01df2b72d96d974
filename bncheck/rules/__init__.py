"""The rule registry.

A rule is a module with ``ID``, ``NAME``, ``DEFAULT_SEVERITY``, ``NEEDS`` (what it judges:
``static`` rules a ``BNLayer``, ``model`` rules a whole ``ModelDescription`` (what the file holds
and lacks), ``checkpoint`` rules the ``CheckpointContents`` of a checkpoint or SavedModel, ``probe``
rules a model's
``ProbeResult``), ``OPTIONS`` (thresholds and their
defaults), a docstring that is its documentation (structured as ``rules/docs.py`` describes, so
that ``bncheck explain`` and the reports can use its parts), and ``check(subject, options)``
yielding ``Problem``s. Rules never decide their own severity or whether they run: configuration
does, and the runner stamps each problem.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, get_args

from bncheck.findings import Problem, Severity
from bncheck.rules import (
    bn001_untouched_moving_stats,
    bn002_untrained_layer,
    bn003_non_finite_stats,
    bn004_negative_variance,
    bn005_dead_channels,
    bn006_unstable_gain,
    bn007_frozen_layer,
    bn008_momentum_never_updates,
    bn009_suspicious_momentum,
    bn010_hardcoded_training_call,
    bn011_checkpoint_missing_moving_stats,
    bn012_checkpoint_model_mismatch,
    bn013_inference_collapse,
    bn014_stale_moving_stats,
    bn015_recalibration_effect,
    bn016_batch_dependent_inference,
    bn017_unsafe_model_content,
    bn018_incomplete_layer_weights,
    bn019_pickled_code,
    bn020_matched_by_position,
    bn021_unfused_batchnorm,
    bn022_batch_statistics_at_inference,
    bn023_metric_below_bound,
    bn024_probe_not_run,
)

if TYPE_CHECKING:
    from bncheck.model import BNLayer, CheckpointContents, ModelDescription
    from bncheck.probe.results import ProbeResult

#: What a rule judges, and so when the engine runs it.
Needs = Literal["static", "model", "checkpoint", "probe"]

#: A rule's thresholds by name: its defaults, then the configuration's values.
RuleOptions = Mapping[str, float]


class Rule(Protocol):
    """What every rule module defines; its ``check`` takes the subject its ``NEEDS`` names
    (``StaticRule`` and the other protocols below)."""

    ID: str
    NAME: str
    DEFAULT_SEVERITY: Severity
    NEEDS: Needs
    OPTIONS: RuleOptions
    __doc__: str | None

    def check(self, subject: Any, options: RuleOptions) -> Iterator[Problem]: ...


class StaticRule(Protocol):
    """``NEEDS = "static"``: judges one layer as a file describes it."""

    def check(self, layer: BNLayer, options: RuleOptions) -> Iterator[Problem]: ...


class ModelRule(Protocol):
    """``NEEDS = "model"``: judges what a file holds and lacks as a whole."""

    def check(self, description: ModelDescription, options: RuleOptions) -> Iterator[Problem]: ...


class CheckpointRule(Protocol):
    """``NEEDS = "checkpoint"``: judges the variable groups of a checkpoint or SavedModel."""

    def check(self, contents: CheckpointContents, options: RuleOptions) -> Iterator[Problem]: ...


class ProbeRule(Protocol):
    """``NEEDS = "probe"``: judges what running the model measured."""

    def check(self, result: ProbeResult, options: RuleOptions) -> Iterator[Problem]: ...


def _registry(*modules: ModuleType) -> dict[str, Rule]:
    for module in modules:
        if module.NEEDS not in get_args(Needs):
            raise TypeError(f"{module.__name__}: NEEDS {module.NEEDS!r} is not one of {Needs}")
    return {module.ID: cast(Rule, module) for module in modules}


RULES: dict[str, Rule] = _registry(
    bn001_untouched_moving_stats,
    bn002_untrained_layer,
    bn003_non_finite_stats,
    bn004_negative_variance,
    bn005_dead_channels,
    bn006_unstable_gain,
    bn007_frozen_layer,
    bn008_momentum_never_updates,
    bn009_suspicious_momentum,
    bn010_hardcoded_training_call,
    bn011_checkpoint_missing_moving_stats,
    bn012_checkpoint_model_mismatch,
    bn013_inference_collapse,
    bn014_stale_moving_stats,
    bn015_recalibration_effect,
    bn016_batch_dependent_inference,
    bn017_unsafe_model_content,
    bn018_incomplete_layer_weights,
    bn019_pickled_code,
    bn020_matched_by_position,
    bn021_unfused_batchnorm,
    bn022_batch_statistics_at_inference,
    bn023_metric_below_bound,
    bn024_probe_not_run,
)


def by_name_or_id(key: str) -> Rule | None:
    """Look a rule up by ID (``BN001``, any case) or name (``untouched-moving-stats``)."""
    if key.upper() in RULES:
        return RULES[key.upper()]
    return next((rule for rule in RULES.values() if key == rule.NAME), None)


if TYPE_CHECKING:
    # mypy checks each rule's check() against the protocol of the subject it judges.
    _STATIC: tuple[StaticRule, ...] = (
        bn001_untouched_moving_stats,
        bn002_untrained_layer,
        bn003_non_finite_stats,
        bn004_negative_variance,
        bn005_dead_channels,
        bn006_unstable_gain,
        bn007_frozen_layer,
        bn008_momentum_never_updates,
        bn009_suspicious_momentum,
        bn010_hardcoded_training_call,
    )
    _MODEL: tuple[ModelRule, ...] = (
        bn018_incomplete_layer_weights,
        bn019_pickled_code,
        bn021_unfused_batchnorm,
        bn022_batch_statistics_at_inference,
    )
    _CHECKPOINT: tuple[CheckpointRule, ...] = (
        bn011_checkpoint_missing_moving_stats,
        bn012_checkpoint_model_mismatch,
        bn020_matched_by_position,
    )
    _PROBE: tuple[ProbeRule, ...] = (
        bn013_inference_collapse,
        bn014_stale_moving_stats,
        bn015_recalibration_effect,
        bn016_batch_dependent_inference,
        bn017_unsafe_model_content,
        bn023_metric_below_bound,
        bn024_probe_not_run,
    )
