"""One verdict per layer: measured changes carry their uncertainty, advice needs evidence, and
labelled measurement settles the static suspicion. Built by hand, so no model runs here."""

from __future__ import annotations

import numpy as np
import pytest

from bncheck import verdict
from bncheck.engine import probe_findings, static_findings
from bncheck.findings import Escalation, Finding, Severity
from bncheck.model import ModelDescription
from bncheck.probe.measure import MetricSums
from bncheck.probe.results import Metric
from bncheck.probe.uncertainty import Interval, paired_change
from bncheck.recalibrate.command import _refusal
from bncheck.recalibrate.results import Verification
from bncheck.rules import bn015_recalibration_effect
from bncheck.settings import Settings
from tests.report_text import unwrapped
from tests.rules.conftest import layer, measured_layer, measured_output, population, probe_result


def correct(rate: float, count: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(count) < rate).astype(float)


def test_the_interval_is_deterministic_and_covers_the_measured_change() -> None:
    before, after = correct(0.90, 2000, 1), correct(0.95, 2000, 2)
    interval = paired_change(before, after)
    assert interval is not None and interval == paired_change(before, after)
    assert interval.low < float(np.mean(after - before)) < interval.high
    assert interval.excludes_zero and interval.low > 0
    # The spread matches the textbook standard error of a mean difference.
    error = float(np.std(after - before) / np.sqrt(2000))
    assert interval.high - interval.low == pytest.approx(2 * 1.96 * error, rel=0.1)


def test_few_samples_leave_the_change_unproven() -> None:
    before, after = correct(0.90, 40, 1), correct(0.95, 40, 2)
    interval = paired_change(before, after)
    assert interval is not None and not interval.excludes_zero
    assert paired_change(before[:1], after[:1]) is None


def test_metric_sums_keep_each_samples_value() -> None:
    predictions = np.eye(3)[[0, 1, 2, 1]]
    sums = MetricSums()
    sums.add(predictions, np.array([0, 1, 1, 1]))
    sums.add(predictions[:2] * 2.0, np.array([1, 1]))
    assert sums.values().tolist() == [1, 1, 0, 1, 0, 1]
    assert sums.value() == pytest.approx(4 / 6)
    regression = MetricSums()
    regression.add(np.array([[1.0], [3.0]]), np.array([2.0, 2.5]))
    assert regression.name == "mean squared error"
    assert regression.values().tolist() == [1.0, 0.25]


def labelled(stored: float, reestimated: float, low: float, high: float, samples: int) -> Metric:
    return Metric("accuracy", stored, reestimated, None, Interval(low, high, samples))


def test_an_interval_that_includes_no_change_gives_no_advice() -> None:
    metric = labelled(0.90, 0.931, -0.008, 0.070, 112)
    probe = probe_result(outputs=(measured_output(metric=metric),))
    [problem] = bn015_recalibration_effect.check(probe, bn015_recalibration_effect.OPTIONS)
    assert "(+3.1 points, 95% interval -0.8 to +7.0)" in problem.message
    assert problem.message.endswith("inconclusive on 112 samples: give more data")
    assert "recalibrate" not in problem.message.split(":")[-2]
    assert problem.escalation is Escalation.MITIGATED
    assert problem.details["advice"] == "inconclusive"


def test_recalibrate_refuses_what_it_cannot_show_to_be_better() -> None:
    def refusal(metric: Metric) -> str | None:
        return _refusal(Verification("held.npz", True, 112, metric, None, 0.5), Settings())

    unproven = refusal(labelled(0.90, 0.931, -0.008, 0.070, 112))
    assert unproven is not None
    assert unproven.endswith("inconclusive on 112 samples: give more data")
    assert refusal(labelled(0.20, 0.95, 0.70, 0.80, 112)) is None
    worse = refusal(labelled(0.95, 0.60, -0.40, -0.30, 112))
    assert worse is not None and "would fall from 95.0% to 60.0%" in worse
    # Not one prediction changes: more data would not make the case, and the refusal says so.
    unchanged = refusal(labelled(0.99, 0.99, 0.0, 0.0, 397))
    assert unchanged is not None and "would stay at 99.0%" in unchanged
    assert unchanged.endswith("not one of the 397 samples changes: nothing to gain")


@pytest.mark.parametrize(
    ("stored", "reestimated", "low", "high"),
    [
        (0.90, 0.925, 0.004, 0.046),  # a significant +2.5 points, below max_metric_gain
        (0.90, 0.905, 0.001, 0.009),  # significant, below min_metric_change
        (0.20, 0.95, 0.70, 0.80),
        (0.90, 0.931, -0.008, 0.070),  # the interval includes no change
        (0.90, 0.90, 0.0, 0.0),  # unchanged
        (0.95, 0.60, -0.40, -0.30),
        (0.95, 0.94, -0.02, -0.001),  # a significant small loss
    ],
)
def test_inspect_advises_exactly_what_recalibrate_writes(
    stored: float, reestimated: float, low: float, high: float
) -> None:
    """One rule: BN015 advises recalibrating where, and only where, recalibrate writes; its
    finding is never information calling a change too small that recalibrate writes."""
    metric = labelled(stored, reestimated, low, high, 300)
    probe = probe_result(outputs=(measured_output(metric=metric),))
    problems = list(bn015_recalibration_effect.check(probe, bn015_recalibration_effect.OPTIONS))
    advised = [p for p in problems if "bncheck recalibrate writes them" in p.message]
    written = _refusal(Verification("held.npz", True, 300, metric, None, 0.5), Settings()) is None
    assert bool(advised) is written
    assert written is (low > 0)
    for problem in advised:
        assert problem.escalation is not Escalation.MITIGATED


#: A ``BatchNormalization(center=False, scale=False)`` whose statistics never moved.
PLAIN = {"gamma": None, "beta": None, "center": False, "scale": False}


def test_a_layer_without_affine_arrays_at_its_initial_statistics_never_moved() -> None:
    untouched = layer(moving_mean=[0.0] * 4, moving_variance=[1.0] * 4, **PLAIN)
    assert verdict.statistics_never_moved(untouched) == ["no affine arrays"]
    assert verdict.learned_without_batch_statistics(untouched)
    assert not verdict.learned_without_batch_statistics(layer(**PLAIN))
    held = layer(moving_mean=[0.0] * 4, moving_variance=[1.0] * 4, momentum=1.0, **PLAIN)
    assert not verdict.learned_without_batch_statistics(held)


def settled(metric: Metric | None, untouched: bool) -> list[Finding]:
    settings = Settings()
    static = layer(path="m/bn", moving_mean=[0.0] * 4, moving_variance=[1.0] * 4, **PLAIN)
    description = ModelDescription("m.keras", "keras", (static,))
    probe = probe_result(
        (
            measured_layer(
                path="m/bn",
                moving_mean=np.zeros(4),
                moving_variance=np.ones(4),
                population=population([3.0] * 4, [0.05] * 4),
                untouched=untouched,
            ),
        ),
        (measured_output(metric=metric, reestimated_top1_agreement=0.6),),
    )
    findings = static_findings(description, settings) + probe_findings(probe, settings)
    return verdict.settle(findings, probe, settings)


def test_measurement_that_says_keep_turns_the_static_finding_into_information() -> None:
    keep = labelled(0.984, 0.62, -0.40, -0.33, 400)
    findings = settled(keep, untouched=False)
    on_layer = [finding for finding in findings if finding.layer == "m/bn"]
    [finding] = on_layer  # BN014's staleness is part of BN002's one finding
    assert finding.rule == "BN002" and finding.severity is Severity.INFO
    assert "keep them (BN015: do not recalibrate)" in finding.message
    assert "BN014" in finding.message and "measured_staleness" in finding.details
    assert not any(f.severity >= Severity.WARNING for f in findings)


def test_statistics_that_never_moved_are_not_judged_stale() -> None:
    findings = settled(None, untouched=True)
    assert [f.rule for f in findings if f.layer == "m/bn"] == ["BN002"]


def test_measurement_that_says_recalibrate_keeps_the_worst_severity() -> None:
    better = labelled(0.10, 0.95, 0.80, 0.90, 400)
    [finding] = [f for f in settled(better, untouched=False) if f.layer == "m/bn"]
    assert finding.severity is Severity.ERROR  # BN014's severe staleness
    assert "recalibrate with --include-untouched" in finding.message


def test_identical_findings_across_layers_are_one_line_of_the_text_report() -> None:
    from bncheck.findings import ModelResult, Report
    from bncheck.reporters import REPORTERS
    from bncheck.reporters.options import PLAIN

    untrained = tuple(
        layer(
            path=f"net/bn{index}",
            gamma=[1.0] * 4,
            beta=[0.0] * 4,
            moving_mean=[0.0] * 4,
            moving_variance=[1.0] * 4,
        )
        for index in range(53)
    )
    description = ModelDescription("m.keras", "keras", untrained)
    findings = tuple(static_findings(description, Settings()))
    assert len(findings) == 53
    report = Report((ModelResult("m.keras", "keras", description, findings),), Settings().fail_on)
    text = unwrapped(REPORTERS["table"](report, PLAIN))
    lines = [line for line in text.splitlines() if "BN002" in line]
    assert lines == [
        "warning  BN002 untrained-layer  53 layers (net/bn0, net/bn1, net/bn2 and 50 more): "
        "gamma, beta, moving_mean, moving_variance are all still at their initial values: the "
        "layer never trained"
    ]
    # JSON keeps one entry per layer.
    assert REPORTERS["json"](report, PLAIN).count('"BN002"') == 53


def stale_layer_findings(metric: Metric) -> list[Finding]:
    """A layer whose statistics trained (no static suspicion) but sit far from the data's."""
    settings = Settings()
    static = layer(path="m/bn", moving_mean=[0.5] * 4, moving_variance=[2.0] * 4)
    description = ModelDescription("m.keras", "keras", (static,))
    probe = probe_result(
        (
            measured_layer(
                path="m/bn",
                moving_mean=np.full(4, 0.5),
                moving_variance=np.full(4, 2.0),
                population=population([3.0] * 4, [0.05] * 4),
                untouched=False,
            ),
        ),
        (measured_output(metric=metric, reestimated_top1_agreement=0.6),),
    )
    findings = static_findings(description, settings) + probe_findings(probe, settings)
    return [f for f in verdict.settle(findings, probe, settings) if f.rule == "BN014"]


def test_staleness_the_network_works_with_is_information_that_says_keep() -> None:
    """BN014 does not advise what BN015 forbids: a network fine-tuned with its statistics held
    (PyTorch's eval()) is off the data's statistics and worse re-estimated."""
    [kept] = stale_layer_findings(labelled(0.952, 0.918, -0.058, -0.012, 400))
    assert kept.severity is Severity.INFO
    assert "keep them (BN015: do not recalibrate)" in kept.message
    [stale] = stale_layer_findings(labelled(0.20, 0.95, 0.70, 0.80, 400))
    assert stale.severity >= Severity.WARNING and "keep them" not in stale.message


def test_staleness_that_changes_nothing_measurable_is_information() -> None:
    """A model whose Dropout shifts what its last BatchNorm sees: the statistics differ from
    the data's, yet re-estimating them changes accuracy by no more than 1.3 points either way.
    The gate must not fail on it; on 40 samples the interval cannot bound the effect, and the
    finding keeps its severity."""
    [bounded] = stale_layer_findings(labelled(0.980, 0.982, -0.013, 0.013, 397))
    assert bounded.severity is Severity.INFO
    assert "the network does as well with these statistics (BN015)" in bounded.message
    [wide] = stale_layer_findings(labelled(0.80, 0.85, -0.10, 0.20, 40))
    assert wide.severity >= Severity.WARNING and "does as well" not in wide.message


@pytest.mark.parametrize(
    ("low", "high", "shown"),
    [
        (0.0004, 0.07, "95% interval +0.04 to +7.0"),
        (-0.00004, 0.07, "95% interval -0.004 to +7.0"),
        (0.0, 0.0, "(0.0 points, 95% interval 0.0 to 0.0)"),
    ],
)
def test_an_interval_bound_near_zero_shows_its_side(low: float, high: float, shown: str) -> None:
    reestimated = 0.90 if high == 0 else 0.931
    assert shown in f"({labelled(0.90, reestimated, low, high, 400).describe_change()})"
