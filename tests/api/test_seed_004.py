"""Seed 004: a ``tf.function`` loop that calls ``model(image)`` trains the weights while the
moving statistics never move. The guard names it at step 100; the corrected loop passes."""

from __future__ import annotations

from typing import Any

import keras
import pytest
import tensorflow as tf

import bncheck
from tests.api.conftest import batches


class MyModel(keras.Model):
    """The seed's subclassed model (its experiment 3.3), for 10 classes of 8x8 digits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = keras.layers.Conv2D(32, 3, activation="relu")
        self.batch_norm1 = keras.layers.BatchNormalization()
        self.flatten = keras.layers.Flatten()
        self.d1 = keras.layers.Dense(128, activation="relu")
        self.d2 = keras.layers.Dense(10, activation="softmax")

    def call(self, x: Any, training: bool | None = None) -> Any:
        x = self.conv1(x)
        x = self.batch_norm1(x, training=training)
        x = self.flatten(x)
        x = self.d1(x)
        return self.d2(x)


def train(digits: Any, training: bool | None) -> bncheck.GuardResult | None:
    keras.backend.clear_session()  # the model's name in the messages starts afresh
    keras.utils.set_random_seed(4)
    model = MyModel()
    optimizer = keras.optimizers.RMSprop(1e-3)
    loss_object = keras.losses.SparseCategoricalCrossentropy()

    @tf.function
    def train_step(image: Any, label: Any) -> None:
        with tf.GradientTape() as tape:
            predictions = model(image) if training is None else model(image, training=training)
            loss = loss_object(label, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    guard = bncheck.keras.watch(model, on_problem="raise")
    for images, labels in batches(digits, 120):
        train_step(images, labels)
        guard.step()
    return guard.last_result


def test_the_seed_loop_is_caught_at_step_100(digits: Any) -> None:
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        train(digits, training=None)
    assert raised.value.result.steps == 100
    assert str(raised.value) == (
        "after 100 steps the moving statistics of 1 BatchNorm layer have not moved: does your "
        "training loop call the model with training=True? (my_model/batch_norm1)"
    )


def test_the_corrected_loop_passes(digits: Any) -> None:
    result = train(digits, training=True)
    assert result is not None and result.steps == 100
    assert not result.problem and result.moved == ("my_model/batch_norm1",)
