"""The static safety check finds code in configurations before anything loads them."""

from __future__ import annotations

from typing import Any

import pytest

from bncheck.probe.runtimes import keras_model
from bncheck.probe.safety import model_config, scan_config
from tests.conftest import FIXTURES, fixture_manifest


def layer(class_name: str, name: str, module: str | None = "keras.layers", **config: Any) -> dict:
    return {
        "module": module,
        "class_name": class_name,
        "config": {"name": name, **config},
        "registered_name": None,
    }


def functional(*layers: dict, **extra: Any) -> dict:
    return {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "config": {"name": "model", "layers": list(layers)},
        **extra,
    }


def kinds(config: dict, **kwargs: Any) -> list[tuple[str, str, str]]:
    return [(ref.kind, ref.where, ref.detail) for ref in scan_config(config, **kwargs)]


def test_plain_keras_layers_are_clean() -> None:
    relu = {"module": "builtins", "class_name": "function", "config": "relu"}
    gelu = {"module": "keras.activations", "class_name": "function", "config": "gelu"}
    config = functional(
        layer("Conv2D", "conv", activation=relu),
        layer("BatchNormalization", "bn"),
        layer("Dense", "head", activation=gelu),
    )
    assert kinds(config) == []


def test_lambda_layer_with_bytecode() -> None:
    bytecode = {"class_name": "__lambda__", "config": {"code": "4wEA", "defaults": None}}
    config = functional(layer("Lambda", "scale", function=bytecode))
    assert kinds(config) == [("lambda", "model/scale", "holding marshalled Python bytecode")]


def test_lambda_calling_a_keras_utility_cve_2025_9906() -> None:
    loader = {"module": "keras.models", "class_name": "function", "config": "load_model"}
    config = functional(layer("Lambda", "l", function=loader, arguments={"safe_mode": False}))
    assert kinds(config) == [("lambda", "model/l", "calling keras.models.load_model")]


def test_keras2_lambda_with_a_code_list() -> None:
    keras2 = {
        "class_name": "Lambda",
        "config": {"name": "l", "function": ["4wEA", None, None], "function_type": "lambda"},
    }
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [keras2]}}
    assert kinds(config) == [("lambda", "m/l", "holding marshalled Python bytecode")]


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("subprocess", "run"), ("keras.utils", "get_file"), (None, "x")],
)
def test_function_outside_the_modelling_api_cve_2025_1550(module: str | None, name: str) -> None:
    function = {"module": module, "class_name": "function", "config": name}
    config = functional(layer("Dense", "head", activation=function))
    assert kinds(config) == [("function", "model/head", f"{module}.{name}")]


def test_bytecode_anywhere_is_found() -> None:
    bytecode = {"class_name": "__lambda__", "config": {"value": "4wEA"}}
    config = functional(layer("Dense", "head", activation=bytecode))
    assert kinds(config) == [("bytecode", "model/head", "marshalled Python function")]


def test_custom_classes() -> None:
    registered = layer("Scale", "scale", module=None)
    registered["registered_name"] = "my>Scale"
    foreign = layer("Evil", "evil", module="evil_package.layers")
    config = functional(registered, foreign)
    assert kinds(config) == [
        ("custom-class", "model/scale", "my>Scale"),
        ("custom-class", "model/evil", "evil_package.layers.Evil"),
    ]
    assert kinds(config, trusted={"my>Scale", "Evil"}) == []


def test_keras2_layer_names_are_checked_against_keras_when_known() -> None:
    config = {
        "class_name": "Functional",
        "config": {
            "name": "m",
            "layers": [
                {
                    "class_name": "Dense",
                    "config": {
                        "name": "d",
                        "kernel_initializer": {"class_name": "GlorotUniform", "config": {}},
                    },
                },
                {"class_name": "MyLayer", "config": {"name": "mine"}},
            ],
        },
    }
    builtin = {"Functional", "Dense"}
    assert kinds(config, builtin_layers=builtin) == [("custom-class", "m/mine", "MyLayer")]
    assert kinds(config) == []


def test_nested_models_and_wrappers_name_the_layer() -> None:
    bytecode = {"class_name": "__lambda__", "config": {}}
    inner = layer("Lambda", "inner_lambda", function=bytecode)
    wrapper = layer("TimeDistributed", "td", layer=inner)
    nested = layer("Functional", "block", module="keras.src.models.functional", layers=[wrapper])
    assert [ref.where for ref in scan_config(functional(nested))] == ["model/block/td/inner_lambda"]


def test_compile_config_is_not_scanned() -> None:
    loss = {"module": "my_losses", "class_name": "MyLoss", "config": {}}
    config = functional(layer("Dense", "d"), compile_config={"loss": loss})
    assert kinds(config) == []


CODE_FIXTURES = {
    "probe/lambda_layer.keras": "lambda",
    "probe/lambda_layer.h5": "lambda",
    "probe/keras2_lambda.h5": "lambda",
    "probe/foreign_function.keras": "function",
    "probe/custom_layer.keras": "custom-class",
    # tf.keras's SyncBatchNormalization class does not exist in Keras 3.
    "keras2/nested.h5": "custom-class",
}


def _keras_configured(fixtures: list[str]) -> list[str]:
    """The fixtures Keras would load a model from: those with a configuration."""
    configured = []
    for fixture in fixtures:
        path = FIXTURES / fixture
        if path.suffix in (".keras", ".h5", ".hdf5") and model_config(str(path)) is not None:
            configured.append(fixture)
    return configured


CONFIGURED = _keras_configured(sorted(fixture_manifest()))


def test_the_fixtures_with_a_configuration_include_every_code_fixture() -> None:
    assert set(CODE_FIXTURES) <= set(CONFIGURED)
    assert len(CONFIGURED) >= 40


@pytest.mark.parametrize("fixture", CONFIGURED)
def test_fixtures_hold_code_exactly_where_expected(fixture: str) -> None:
    config = model_config(str(FIXTURES / fixture))
    assert config is not None
    found = {
        ref.kind for ref in scan_config(config, builtin_layers=keras_model.builtin_layer_names())
    }
    expected = {CODE_FIXTURES[fixture]} if fixture in CODE_FIXTURES else set()
    assert found == expected
