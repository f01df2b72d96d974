"""The probe's verdicts across seeds and batch sizes: no false alarm on healthy 10-class models,
and the broken ones flagged every time.

Each model is loaded once and probed on its labelled training digits with seeds 0-9 and batch
sizes 8, 32 and 128, through the same functions ``bncheck inspect --data`` runs (static findings
plus the probe rules, with default settings). The default run probes each model with every batch
size once (a seed each); the whole sweep is marked slow and runs in CI.
"""

from __future__ import annotations

import itertools
import shutil
from collections import Counter
from pathlib import Path

import pytest

from bncheck.engine import judged, probe_findings
from bncheck.findings import Finding, Severity
from bncheck.probe.options import ProbeOptions
from bncheck.probe.runner import BatchPlan, probe_keras_model
from bncheck.probe.runtimes import keras_model
from bncheck.readers import read_model
from bncheck.rules._arrays import untouched_while_trained
from bncheck.settings import Settings
from tests.conftest import FIXTURES
from tests.probe import training_only

MODELS = FIXTURES / "calibration"
DATA = str(MODELS / "digits_train.npz")
SWEEP = list(itertools.product(range(10), (8, 32, 128)))
#: Every batch size, each with a seed of its own.
QUICK = [(0, 8), (1, 32), (2, 128)]
#: The plans each sweep test runs: the quick one by default, the whole one with ``-m slow``.
PLANS = [pytest.param(QUICK, id="quick"), pytest.param(SWEEP, id="sweep", marks=pytest.mark.slow)]


def sweep(name: str | Path, plan: list[tuple[int, int]] = SWEEP) -> list[list[Finding]]:
    """The findings of ``bncheck inspect MODEL --data DATA --seed S --batch-size B`` for each
    (seed, batch size), the model (a fixture's name, or a path) loaded once."""
    path = str(MODELS / f"{name}.keras" if isinstance(name, str) else name)
    settings = Settings()
    description = read_model(path)
    static = list(judged(path, description, settings).findings)
    untouched = {layer.path: bool(untouched_while_trained(layer)) for layer in description.layers}
    model = keras_model.load_model(path, unsafe=False, custom_objects={})
    found = []
    for seed, batch_size in plan:
        options = ProbeOptions(data=DATA, seed=seed, batch_size=batch_size)
        source = BatchPlan(keras_model.input_specs(model), options)
        result = probe_keras_model(path, model, source, (), options, lambda _: None, untouched)
        found.append(static + probe_findings(result, settings))
    return found


def serious(findings: list[Finding]) -> list[tuple[str, str | None, str]]:
    return [(f.rule, f.layer, f.message) for f in findings if f.severity > Severity.INFO]


@pytest.mark.parametrize("plans", PLANS)
@pytest.mark.parametrize("name", ["healthy_cnn", "healthy_mlp"])
def test_healthy_models_raise_no_warning_or_error(name: str, plans: list[tuple[int, int]]) -> None:
    alarms = {plan: serious(found) for plan, found in zip(plans, sweep(name, plans), strict=True)}
    assert {plan: found for plan, found in alarms.items() if found} == {}


#: Models trained here, with layers that act only in training: every seed, the batch sizes in
#: turn (training each costs more than its sweep).
TRAINED_SWEEP = [(seed, (8, 32, 128)[seed % 3]) for seed in range(6)]


@pytest.mark.parametrize("name", sorted(training_only.MODELS))
def test_healthy_models_with_training_only_layers_raise_no_warning_or_error(
    name: str, tmp_path: Path, shared_cache: Path
) -> None:
    """Dropout, noise and augmentation inside the model are off at inference, as in
    ``model.predict``: they make no healthy model look batch-dependent or stale. The augmented
    CNN's statistics fit the augmented batches it trained on, and on clean digits re-estimated
    ones measurably do better: BN015 may say so, raising accuracy, and nothing else."""
    path = tmp_path / f"{name}.keras"
    shutil.copyfile(training_only.trained_file(name, shared_cache), path)
    found = sweep(path, TRAINED_SWEEP)
    alarms = {plan: serious(f) for plan, f in zip(TRAINED_SWEEP, found, strict=True)}
    if name == "augmented_cnn":
        alarms = {
            plan: [a for a in found if not (a[0] == "BN015" and "would raise" in a[2])]
            for plan, found in alarms.items()
        }
    assert {plan: f for plan, f in alarms.items() if f} == {}


def rules_of(findings: list[Finding]) -> Counter[tuple[str, str]]:
    return Counter((f.rule, str(f.severity)) for f in findings)


@pytest.mark.parametrize("plans", PLANS)
def test_stale_statistics_are_flagged_in_every_run(plans: list[tuple[int, int]]) -> None:
    for plan, found in zip(plans, sweep("stale_cnn", plans), strict=True):
        counted = rules_of(found)
        assert counted[("BN015", "error")] == 1, plan
        assert sum(n for (rule, _), n in counted.items() if rule == "BN014") >= 2, plan
        [effect] = [f for f in found if f.rule == "BN015"]
        assert "would raise accuracy from" in effect.message, plan


#: The collapse is no subtle effect, and its 20-layer network is the slowest to trace: every seed
#: with batches of 32, and every batch size with seed 0.
COLLAPSE_SWEEP = [(seed, 32) for seed in range(10)] + [(0, 8), (0, 128)]


@pytest.mark.parametrize(
    "plans",
    [
        pytest.param(QUICK, id="quick"),
        pytest.param(COLLAPSE_SWEEP, id="sweep", marks=pytest.mark.slow),
    ],
)
def test_a_collapsed_network_is_flagged_in_every_run(plans: list[tuple[int, int]]) -> None:
    found_by_plan = sweep("no_training_flag_deep", plans)
    for plan, found in zip(plans, found_by_plan, strict=True):
        counted = rules_of(found)
        assert counted[("BN013", "error")] == 1, plan
        assert counted[("BN001", "error")] == 20, plan
        [collapse] = [f for f in found if f.rule == "BN013"]
        assert "retrain with training=True" in collapse.message, plan


@pytest.mark.parametrize(
    "plans",
    [pytest.param(QUICK, id="quick"), pytest.param(SWEEP[::3], id="sweep", marks=pytest.mark.slow)],
)
def test_a_small_network_that_learned_without_batch_statistics_is_not_called_stale(
    plans: list[tuple[int, int]],
) -> None:
    """Point 1 of the measurements: BN001 fires; nothing claims training mode is the truth,
    and the measured advice is not to recalibrate."""
    for plan, found in zip(plans, sweep("no_training_flag_small", plans), strict=True):
        assert {f.rule for f in found} == {"BN001", "BN015"}, plan
        [effect] = [f for f in found if f.rule == "BN015"]
        assert effect.severity == Severity.INFO, plan
        assert "do not recalibrate" in effect.message, plan
        assert "the network learned with its stored statistics" in effect.message, plan
