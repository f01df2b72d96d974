"""The probe runs what Keras runs: its inference passes equal ``model.predict`` bit for bit
whatever layers act only in training, its batch-statistics pass is ``fit``'s BatchNorm, and a
layer called several times in a pass (``TimeDistributed``, a recurrent cell, a custom layer) is
measured over everything it normalised."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from keras import layers

from bncheck.probe.measure import estimate
from bncheck.probe.runtimes import keras_model
from bncheck.probe.runtimes.passes import STORED, TRAINING, Passes
from tests.conftest import CliResult
from tests.probe import training_only
from tests.probe.training_only import digits


@keras.saving.register_keras_serializable("bncheck_tests")
class Shift(keras.layers.Layer):
    """A custom layer that reads ``training`` and defaults to it, as augmentation layers do."""

    def call(self, inputs: Any, training: bool = True) -> Any:
        return inputs + 0.25 if training else inputs


@keras.saving.register_keras_serializable("bncheck_tests")
class TwiceNormalised(keras.layers.Layer):
    """One BatchNorm layer applied to two tensors in one call."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.norm = layers.BatchNormalization(name="shared")

    def call(self, inputs: Any, training: Any = None) -> Any:
        first, second = inputs
        return self.norm(first, training=training) + self.norm(second, training=training)


def training_only_layers() -> keras.Model:
    """Every layer Keras switches by ``training``: augmentation, noise, Dropout, a custom one."""
    inputs = keras.Input((8, 8, 1))
    x = layers.RandomTranslation(0.1, 0.1)(inputs)
    x = layers.RandomZoom(0.1)(x)
    x = layers.RandomFlip("horizontal")(x)
    x = layers.GaussianNoise(0.1)(x)
    x = layers.Conv2D(8, 3, use_bias=False, name="conv")(x)
    x = Shift(name="custom")(layers.BatchNormalization(name="bn1")(x))
    x = layers.Flatten()(layers.ReLU()(x))
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(16, use_bias=False, name="fc")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    return keras.Model(inputs, layers.Dense(10, activation="softmax", name="head")(x))


def fitted(model: keras.Model, x: np.ndarray, y: np.ndarray, epochs: int = 2) -> keras.Model:
    keras.utils.set_random_seed(0)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    return digits()


@pytest.fixture(scope="module")
def switched(images: tuple[np.ndarray, np.ndarray]) -> keras.Model:
    return fitted(training_only_layers(), *images)


def test_inference_passes_equal_predict_bit_for_bit(
    switched: keras.Model, images: tuple[np.ndarray, np.ndarray]
) -> None:
    x, _ = images
    with Passes(switched, keras_model.batchnorm_layers(switched)) as passes:
        for start, size in ((0, 128), (128, 32), (160, 7)):
            batch = x[start : start + size]
            [stored] = passes.run([batch], STORED)
            expected = switched.predict(batch, batch_size=size, verbose=0)
            assert np.array_equal(stored.outputs[0][1], expected)


def test_the_batch_statistics_pass_is_fits_batchnorm_alone(
    switched: keras.Model, images: tuple[np.ndarray, np.ndarray]
) -> None:
    """The layers that act only in training have no weights: the same weights without them,
    called as ``fit`` calls a model (``training=True``), is BatchNorm alone in training mode."""
    x, _ = images
    batch = x[:100]
    inputs = keras.Input((8, 8, 1))
    h = switched.get_layer("bn1")(switched.get_layer("conv")(inputs))
    h = layers.Flatten()(layers.ReLU()(h))
    h = layers.ReLU()(switched.get_layer("bn2")(switched.get_layer("fc")(h)))
    bare = keras.Model(inputs, switched.get_layer("head")(h))
    snapshot = keras_model.Snapshot(switched.variables)
    expected = np.asarray(bare(batch, training=True))
    snapshot.restore()
    conv = np.asarray(switched.get_layer("conv")(batch), dtype=np.float64)
    with Passes(switched, keras_model.batchnorm_layers(switched)) as passes:
        [training] = passes.run([batch], TRAINING)
    np.testing.assert_allclose(training.outputs[0][1], expected, rtol=1e-5, atol=1e-6)
    bn1 = next(m for m in training.moments if m.path.endswith("bn1"))
    np.testing.assert_allclose(bn1.mean, conv.mean((0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn1.variance, conv.var((0, 1, 2)), rtol=1e-4, atol=1e-7)
    assert (bn1.samples, bn1.values) == (100, 100 * 6 * 6)


def test_time_distributed_statistics_are_pooled_over_batch_and_time(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    rows = x[..., 0]  # 8 timesteps of 8 pixels
    inputs = keras.Input((8, 8))
    h = layers.TimeDistributed(layers.Dense(6), name="project")(inputs)
    h = layers.TimeDistributed(layers.BatchNormalization(), name="td")(h)
    model = fitted(
        keras.Model(inputs, layers.Dense(10, activation="softmax")(layers.Flatten()(h))), rows, y
    )
    tap = keras.Model(inputs, model.get_layer("project").output)
    [(path, _)] = layer_list = keras_model.batchnorm_layers(model)
    with Passes(model, layer_list) as passes:
        [training] = passes.run([rows[:256]], TRAINING)
        sums, batches, samples = estimate(
            passes, training_only_batches(rows, 100), lambda _, __: None
        )
    seen = np.asarray(tap(rows[:256]), dtype=np.float64)
    [moments] = training.moments
    np.testing.assert_allclose(moments.mean, seen.mean((0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments.variance, seen.var((0, 1)), rtol=1e-5, atol=1e-7)
    per_step = seen.var(0).mean(0)
    assert (
        np.abs(per_step - seen.var((0, 1))).max()
        > 100 * np.abs(moments.variance - seen.var((0, 1))).max()
    )
    assert (moments.samples, moments.values) == (256, 256 * 8)
    # Over the data: the batches' Bessel-corrected pooled variances, weighted by their samples.
    assert (batches, samples) == (len(range(0, len(rows), 100)), len(rows))
    every = np.asarray(tap(rows), dtype=np.float64)
    parts = [every[start : start + 100] for start in range(0, len(rows), 100)]
    weights = np.array([len(part) for part in parts], dtype=np.float64)
    corrected = [part.var((0, 1)) * part[..., 0].size / (part[..., 0].size - 1) for part in parts]
    population = sums[path].population()
    np.testing.assert_allclose(
        population.variance, np.average(corrected, axis=0, weights=weights), rtol=1e-5
    )


def training_only_batches(x: np.ndarray, size: int) -> list[Any]:
    from bncheck.probe.data import Batch

    return [Batch([x[start : start + size]]) for start in range(0, len(x), size)]


@keras.saving.register_keras_serializable("bncheck_tests")
class NormalisedCell(keras.layers.Layer):
    """A recurrent cell with a BatchNorm layer: called once per timestep inside a loop."""

    def __init__(self, units: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.units = units
        self.state_size = units
        self.dense = layers.Dense(units)
        self.norm = layers.BatchNormalization()

    def build(self, shape: Any) -> None:
        self.dense.build((shape[0], shape[-1] + self.units))
        self.norm.build((shape[0], self.units))

    def call(self, inputs: Any, states: Any, training: Any = None) -> Any:
        joined = keras.ops.concatenate([inputs, states[0]], -1)
        output = keras.ops.tanh(self.norm(self.dense(joined), training=training))
        return output, [output]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "units": self.units}


def cell_moments(cell: Any, x: np.ndarray, backwards: bool) -> tuple[np.ndarray, np.ndarray]:
    """NumPy's run of the cell over ``x`` with batch statistics: the moments of every input its
    BatchNorm layer normalises, pooled over batch and time."""
    kernel, bias = (np.asarray(v, dtype=np.float64) for v in cell.dense.weights)
    gamma, beta = (np.asarray(v, dtype=np.float64) for v in (cell.norm.gamma, cell.norm.beta))
    state = np.zeros((len(x), cell.units))
    seen = []
    for step in reversed(range(x.shape[1])) if backwards else range(x.shape[1]):
        value = np.concatenate([x[:, step], state], -1) @ kernel + bias
        seen.append(value)
        normalised = (value - value.mean(0)) / np.sqrt(value.var(0) + cell.norm.epsilon)
        state = np.tanh(normalised * gamma + beta)
    every = np.concatenate(seen)
    return every.mean(0), every.var(0)


def test_recurrent_and_custom_layers_are_measured_over_every_call(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    rows = x[..., 0]
    inputs = keras.Input((8, 8))
    recurrent = layers.Bidirectional(layers.RNN(NormalisedCell(6)), name="bi")(inputs)
    halves = TwiceNormalised(name="twice")([inputs[:, :4], inputs[:, 4:]])
    joined = layers.Concatenate()([recurrent, layers.Flatten()(halves)])
    model = fitted(keras.Model(inputs, layers.Dense(10, activation="softmax")(joined)), rows, y)
    batch = rows[:128]
    found = keras_model.batchnorm_layers(model)
    with Passes(model, found) as passes:
        [stored] = passes.run([batch], STORED)
        [training] = passes.run([batch], TRAINING)
    # Equal up to float32 rounding: here TensorFlow's graph optimiser may order the sums of this
    # model differently in the two functions (the simpler model above is equal bit for bit).
    expected = model.predict(batch, batch_size=128, verbose=0)
    np.testing.assert_allclose(stored.outputs[0][1], expected, rtol=1e-6, atol=1e-7)
    measured = {moments.path: moments for moments in training.moments}
    assert set(measured) == {path for path, _ in found}
    bidirectional = model.get_layer("bi")
    directions = (("forward_layer", False), ("backward_layer", True))
    for name, backwards in directions:
        layer = getattr(bidirectional, name)
        [path] = [path for path, _ in found if f"/{name}/" in path]
        mean, variance = cell_moments(layer.cell, batch.astype(np.float64), backwards)
        np.testing.assert_allclose(measured[path].mean, mean, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(measured[path].variance, variance, rtol=1e-4, atol=1e-6)
        assert measured[path].values == 128 * 8
    [shared] = [path for path in measured if path.endswith("twice/norm")]
    both = batch.astype(np.float64).reshape(-1, 8)
    np.testing.assert_allclose(measured[shared].mean, both.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(measured[shared].variance, both.var(0), rtol=1e-5, atol=1e-7)
    assert (measured[shared].samples, measured[shared].values) == (128, 128 * 8)


def test_a_healthy_cnn_with_augmentation_inside_passes_the_gate(
    run_cli: Any, tmp_path: Path, shared_cache: Path
) -> None:
    """The issue's case: augmentation layers in the model once made the probe call a healthy
    model batch-dependent (BN016, an error). Every sample counts, the short last batch too.

    Its statistics fit the augmented batches it trained on; on clean digits, re-estimated ones
    can measurably do better, and BN015 may say so (a warning, measured, not a gate failure)."""
    path = tmp_path / "augmented.keras"
    shutil.copyfile(training_only.trained_file("augmented_cnn", shared_cache), path)
    result: CliResult = run_cli("inspect", path, "--data", training_only.DIGITS, "--format", "json")
    assert result.err == ""
    report = result.json()["models"][0]
    raised = [f for f in report["findings"] if f["severity"] != "info"]
    assert all(f["rule"] == "BN015" and f["severity"] == "warning" for f in raised), raised
    [metric] = [o["metric"] for o in report["probe"]["outputs"] if o["metric"] is not None]
    for finding in raised:  # advice the measurement bears out
        assert "would raise" in finding["message"] and metric["reestimated"] > metric["stored"]
    assert not any(f["rule"] == "BN016" for f in report["findings"])
    assert result.code == 0
    data = report["probe"]["data"]
    x, _ = digits()
    assert data["samples"] == len(x) == 1400 and data["batches"] == -(-len(x) // 32)
