"""bncheck's TF-free reading of every BN layer equals what Keras itself loads.

Each layer is looked up in the Keras-loaded model by the nested path bncheck reports, and all
four arrays are compared exactly. Statistics are randomised before saving the generated models,
so a layer mapped to the wrong weights cannot pass by sharing initial values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bncheck.model import ARRAY_NAMES, ModelDescription
from bncheck.readers import read_model
from tests.conftest import FIXTURES, fixture_manifest

keras = pytest.importorskip("keras")

KERAS3_FULL_MODELS = sorted(name for name in fixture_manifest() if name.startswith("keras3/"))
KERAS2_FULL_MODELS = sorted(name for name in fixture_manifest() if name.startswith("keras2/"))


def find_layer(model: Any, path: str) -> Any:
    """Follow a bncheck layer path through nested models and wrappers."""
    names = path.split("/")
    assert names[0] == model.name
    current = model
    for name in names[1:]:
        inner = getattr(current, "layer", None)
        if inner is not None and getattr(inner, "name", None) == name:
            current = inner
        else:
            current = current.get_layer(name)
    return current


def assert_same_arrays(description: ModelDescription, model: Any) -> None:
    assert description.layers, "no BN layers read"
    # Keras's group naming alone located every layer: no fallback on saved names was needed.
    assert not [note for note in description.notes if "saved name" in note]
    for layer in description.layers:
        keras_layer = find_layer(model, layer.path)
        for array_name in ARRAY_NAMES:
            ours = layer.array(array_name)
            variable = getattr(keras_layer, array_name, None)
            if ours is None:
                assert variable is None, f"{layer.path}: {array_name} missing"
                continue
            np.testing.assert_array_equal(
                ours, np.asarray(variable), err_msg=f"{layer.path} {array_name}"
            )
        assert layer.momentum == pytest.approx(keras_layer.momentum)
        assert layer.epsilon == pytest.approx(keras_layer.epsilon)
        assert layer.trainable == keras_layer.trainable


@pytest.mark.parametrize("fixture", KERAS3_FULL_MODELS)
def test_keras3_fixture_matches_load_model(fixture: str) -> None:
    path = FIXTURES / fixture
    model = keras.models.load_model(path, compile=False)
    assert_same_arrays(read_model(str(path)), model)


@pytest.mark.parametrize("fixture", KERAS2_FULL_MODELS)
def test_keras2_fixture_matches_tf_keras_load_model(fixture: str) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    path = FIXTURES / fixture
    model = tf_keras.models.load_model(path, compile=False)
    assert_same_arrays(read_model(str(path)), model)


def randomise_batchnorm(model: Any, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers() if hasattr(model, "_flatten_layers") else []:
        if "BatchNormalization" in type(layer).__name__:
            for variable in layer.weights:
                shape = tuple(variable.shape)
                variable.assign(rng.uniform(0.1, 2.0, size=shape).astype("float32"))


def keras3_layers(model: Any) -> list[Any]:
    found, stack = [], [model]
    while stack:
        layer = stack.pop()
        found.append(layer)
        stack.extend(getattr(layer, "_layers", []))
        if getattr(layer, "layer", None) is not None:
            stack.append(layer.layer)
    return found


def mobilenet_in_sequential_keras3() -> Any:
    from keras import layers

    base = keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            base,
            layers.GlobalAveragePooling2D(),
            layers.BatchNormalization(),
            layers.Dense(2),
        ]
    )
    rng = np.random.default_rng(1)
    for layer in keras3_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            for variable in layer.weights:
                variable.assign(rng.uniform(0.1, 2.0, size=tuple(variable.shape)).astype("float32"))
    return model


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_mobilenet_nested_in_sequential(tmp_path: Path, suffix: str) -> None:
    """53 BN layers, repeated classes, a Functional inside a Sequential: the issue's example."""
    model = mobilenet_in_sequential_keras3()
    target = tmp_path / f"mobilenet{suffix}"
    model.save(target)
    description = read_model(str(target))
    assert len(description.layers) == 53
    assert description.layers[0].path == f"{model.name}/mobilenetv2_0.35_32/bn_Conv1"
    assert not np.any(description.layers[0].moving_variance == 1.0), (
        "statistics were not randomised"
    )
    assert_same_arrays(description, keras.models.load_model(target, compile=False))


def test_keras2_mobilenet_nested_in_sequential(tmp_path: Path) -> None:
    tf_keras = pytest.importorskip("tf_keras")
    base = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    model = tf_keras.Sequential(
        [base, tf_keras.layers.GlobalAveragePooling2D(), tf_keras.layers.Dense(2)]
    )
    randomise_batchnorm(model)
    target = tmp_path / "mobilenet_k2.h5"
    model.save(target)
    description = read_model(str(target))
    assert len(description.layers) == 52
    assert description.layers[0].axis == (3,)
    assert not np.any(description.layers[0].moving_variance == 1.0), (
        "statistics were not randomised"
    )
    assert_same_arrays(description, tf_keras.models.load_model(target, compile=False))


def test_weights_only_files_hold_the_same_arrays_as_the_full_models() -> None:
    """Weights-only readings (found by variables, no config) equal the full model's arrays."""
    pairs = [
        ("weights/nested.weights.h5", "keras3/nested.keras"),
        ("weights/healthy_cnn.weights.h5", "keras3/healthy_cnn.keras"),
        ("weights/keras2_nested_weights.h5", "keras2/nested.h5"),
    ]
    for weights, full in pairs:
        by_weights = read_model(str(FIXTURES / weights))
        by_config = read_model(str(FIXTURES / full))

        def signature(description: ModelDescription) -> list[bytes]:
            return sorted(
                b"".join(
                    np.asarray(layer.array(n)).tobytes()
                    for n in ARRAY_NAMES
                    if layer.array(n) is not None
                )
                for layer in description.layers
            )

        assert signature(by_weights) == signature(by_config), weights
