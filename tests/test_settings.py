from __future__ import annotations

import pytest

from bncheck.engine import inspect_path
from bncheck.errors import UsageError
from bncheck.findings import Escalation, Severity
from bncheck.settings import Settings
from tests.conftest import FIXTURES


def test_defaults_come_from_the_rules() -> None:
    settings = Settings()
    assert settings.rules["BN001"].severity is Severity.ERROR
    assert settings.rules["BN006"].options == {"max_gain": 1e3}
    assert all(rule.enabled for rule in settings.rules.values())


def test_escalations_derive_from_the_configured_severity() -> None:
    settings = Settings().with_overrides(severities={"BN009": "info"})
    assert settings.severity_for("BN009", None) is Severity.INFO
    assert settings.severity_for("BN009", Escalation.SEVERE) is Severity.WARNING
    assert settings.severity_for("BN001", Escalation.SEVERE) is Severity.ERROR
    assert settings.severity_for("BN001", Escalation.MITIGATED) is Severity.INFO


def test_mitigated_training_call_is_info_in_a_real_file() -> None:
    result = inspect_path(str(FIXTURES / "keras3/training_call_frozen.keras"), Settings())
    assert {(f.rule, f.severity) for f in result.findings} == {
        ("BN007", Severity.INFO),
        ("BN010", Severity.INFO),
    }


def test_select_ignore_and_options_change_findings() -> None:
    path = str(FIXTURES / "keras3/untouched_stats.keras")
    assert {f.rule for f in inspect_path(path, Settings()).findings} == {"BN001"}
    only = Settings().with_overrides(select=["momentum-never-updates"])
    assert {f.rule for f in inspect_path(path, only).findings} == set()
    ignored = Settings().with_overrides(ignore=["bn001"])
    assert {f.rule for f in inspect_path(path, ignored).findings} == set()
    # momentum 1.0 explains untouched statistics: BN008 reports them, and BN001 never does.
    stuck = str(FIXTURES / "keras3/momentum_one.keras")
    assert {f.rule for f in inspect_path(stuck, Settings()).findings} == {"BN008"}
    without = Settings().with_overrides(ignore=["momentum-never-updates"])
    assert {f.rule for f in inspect_path(stuck, without).findings} == set()
    strict = Settings().with_overrides(options={"BN009": {"min_momentum": 0.95}})
    pytorch = str(FIXTURES / "keras3/healthy_cnn.keras")  # momentum 0.9
    assert {f.rule for f in inspect_path(pytorch, strict).findings} == {"BN009"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"select": ["BN999"]}, "unknown rule 'BN999'"),
        ({"severities": {"BN001": "fatal"}}, "unknown severity 'fatal'"),
        ({"options": {"BN006": {"max_gian": 5}}}, "BN006 has no option 'max_gian'"),
        ({"options": {"BN006": {"max_gain": "big"}}}, "must be a number"),
    ],
)
def test_bad_overrides_are_usage_errors(overrides: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Settings().with_overrides(**overrides)


def test_per_layer_ignores_match_layer_paths_by_glob() -> None:
    settings = Settings().with_overrides(
        layer_ignores={"*/base/bn1": ["frozen-layer"], "other/*": ["BN001"]}
    )
    path = str(FIXTURES / "keras3/frozen_base.keras")
    assert [(f.rule, f.layer) for f in inspect_path(path, settings).findings] == [
        ("BN007", "frozen/base/bn2")
    ]
    assert settings.ignored_at("BN007", "frozen/base/bn1")
    assert not settings.ignored_at("BN001", "frozen/base/bn1")
    assert not settings.ignored_at("BN007", None)  # model-level problems have no layer


def test_per_layer_ignores_name_known_rules() -> None:
    with pytest.raises(UsageError, match="unknown rule 'BN777'"):
        Settings().with_overrides(layer_ignores={"*": ["BN777"]})
