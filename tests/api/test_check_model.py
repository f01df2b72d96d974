"""``bncheck.check_model``: a live model judged exactly as its saved file is."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

import bncheck
from bncheck.model import BNLayer
from tests.conftest import FIXTURES, fixture_manifest

#: Every Keras 3 model fixture Keras itself loads: the readers' cases, judged live.
KERAS3_MODELS = sorted(
    name
    for name in fixture_manifest()
    if name.startswith("keras3/") and name.endswith((".keras", ".h5"))
)
#: Where the arrays were found in the file: a live model has no file.
#: Where the arrays were read, and what a file records of its writer (a legacy .h5 does not say
#: that Keras 3, which averages biased batch variances, wrote it).
FILE_ONLY_FIELDS = {"source", "locations", "variance_estimator"}


def same_layer(live: BNLayer, saved: BNLayer) -> list[str]:
    """The fields on which two descriptions of a layer differ."""
    differ = []
    for field in fields(BNLayer):
        if field.name in FILE_ONLY_FIELDS:
            continue
        a, b = getattr(live, field.name), getattr(saved, field.name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            equal = (a is None) == (b is None) and (a is None or np.array_equal(a, b, True))
        else:
            equal = a == b
        if not equal:
            differ.append(field.name)
    return differ


def findings(report: bncheck.Report) -> list[tuple[Any, ...]]:
    return [(f.rule, f.layer, f.severity, f.message, dict(f.details)) for f in report.findings]


@pytest.mark.parametrize("name", KERAS3_MODELS)
def test_a_loaded_model_is_judged_like_its_file(name: str) -> None:
    path = FIXTURES / name
    model = keras.models.load_model(path, compile=False)
    live, saved = bncheck.check_model(model), bncheck.inspect(path)
    live_layers = live.models[0].description.layers  # type: ignore[union-attr]
    saved_layers = saved.models[0].description.layers  # type: ignore[union-attr]
    assert [layer.path for layer in live_layers] == [layer.path for layer in saved_layers]
    for a, b in zip(live_layers, saved_layers, strict=True):
        assert same_layer(a, b) == [], a.path
    assert findings(live) == findings(saved)
    assert live.exit_code == saved.exit_code


def small_cnn(**bn: Any) -> Any:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn", **bn)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(10)(x), name="cnn")


def test_a_model_built_in_memory_is_judged_like_the_file_it_saves(tmp_path: Path) -> None:
    inputs = keras.Input((8, 8, 1))
    base = small_cnn(momentum=1.0, center=False, gamma_initializer="zeros")
    base.trainable = False
    x = keras.layers.Dense(10)(base(inputs))
    x = keras.layers.BatchNormalization(name="head_bn", momentum=0.1)(x, training=True)
    wrapped = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="rows_bn"))
    rows = wrapped(keras.layers.Reshape((8, 8))(inputs))
    model = keras.Model(inputs, [x, rows], name="outer")
    live = bncheck.check_model(model)
    model.save(tmp_path / "outer.keras")
    saved = bncheck.inspect(tmp_path / "outer.keras")
    assert findings(live) == findings(saved)
    assert {(rule, layer) for rule, layer, *_ in findings(live)} >= {
        ("BN007", "outer/cnn/bn"),
        ("BN008", "outer/cnn/bn"),
        ("BN009", "outer/head_bn"),
        ("BN010", "outer/head_bn"),
    }
    live_layers = live.models[0].description.layers  # type: ignore[union-attr]
    saved_layers = saved.models[0].description.layers  # type: ignore[union-attr]
    assert [layer.path for layer in live_layers] == [
        "outer/cnn/bn",
        "outer/head_bn",
        "outer/time_distributed/rows_bn",
    ]
    for a, b in zip(live_layers, saved_layers, strict=True):
        assert same_layer(a, b) == [], a.path


def test_the_report_is_one_live_result_in_every_format() -> None:
    report = bncheck.check_model(small_cnn(momentum=1.0))
    (result,) = report.models
    assert (result.path, result.format, result.error) == ("cnn", "live", None)
    document = json.loads(bncheck.render(report, "json"))
    assert document["models"][0]["format"] == "live"
    assert [f["rule"] for f in document["models"][0]["findings"]] == ["BN002", "BN008"]
    assert document["exit_code"] == 1
    for format in ("table", "markdown", "sarif", "junit", "github"):
        assert "BN008" in bncheck.render(report, format)


def test_select_and_ignore_apply_as_for_files() -> None:
    model = small_cnn(momentum=1.0)
    assert [f.rule for f in bncheck.check_model(model, select="BN008").findings] == ["BN008"]
    assert [f.rule for f in bncheck.check_model(model, ignore=["BN008"]).findings] == ["BN002"]


def test_the_current_values_are_judged() -> None:
    model = small_cnn()
    assert [f.rule for f in bncheck.check_model(model).findings] == ["BN002"]
    bn = model.get_layer("bn")
    bn.moving_variance.assign(np.full(8, -1.0, "float32"))
    assert "BN004" in [f.rule for f in bncheck.check_model(model).findings]


def test_a_layer_never_built_is_a_note() -> None:
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="sub")
            self.bn = keras.layers.BatchNormalization(name="bn")

        def call(self, x: Any) -> Any:
            return self.bn(x)

    report = bncheck.check_model(Subclassed())
    description = report.models[0].description
    assert description is not None and description.layers == ()
    assert description.notes == ("sub/bn has no variables yet (the layer was never built)",)


@pytest.mark.parametrize("value", ["model.keras", None, object()])
def test_anything_but_a_keras_model_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match="expected a Keras 3 model or layer"):
        bncheck.check_model(value)
