"""Healthy digit classifiers with layers that act only in training (Dropout, GaussianNoise, data
augmentation inside the model, as Keras's tutorials place it), trained with ``fit`` at test time
on the calibration digits, all 10 classes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
from keras import layers

from tests.conftest import FIXTURES

DIGITS = FIXTURES / "calibration" / "digits_train.npz"


def digits() -> tuple[np.ndarray, np.ndarray]:
    """The calibration training digits: (1400, 8, 8, 1) pixels in [0, 1], labels 0-9."""
    with np.load(DIGITS) as data:
        return data["x"], data["y"]


def augmented_cnn() -> keras.Model:
    """The issue's healthy CNN: augmentation layers inside the model, then conv + BatchNorm."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.RandomTranslation(0.1, 0.1, name="shift")(inputs)
    x = layers.RandomZoom(0.1, name="zoom")(x)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="augmented")


def dropout_mlp() -> keras.Model:
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.Flatten()(inputs)
    x = layers.Dense(64, use_bias=False, name="fc1")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Dropout(0.3, name="drop")(x)
    x = layers.Dense(32, use_bias=False, name="fc2")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="dropout")


def noisy_mlp() -> keras.Model:
    """Noise on the input only: noise between BatchNorm layers inflates the variance the later
    ones see in training, and their moving statistics then truly misdescribe inference."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = layers.GaussianNoise(0.05, name="noise")(layers.Flatten()(inputs))
    x = layers.Dense(64, use_bias=False, name="fc1")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn1")(x))
    x = layers.Dense(32, use_bias=False, name="fc2")(x)
    x = layers.ReLU()(layers.BatchNormalization(name="bn2")(x))
    outputs = layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs, name="noisy")


MODELS: dict[str, Callable[[], keras.Model]] = {
    "augmented_cnn": augmented_cnn,
    "dropout_mlp": dropout_mlp,
    "noisy_mlp": noisy_mlp,
}


def trained(build: Callable[[], keras.Model], epochs: int = 12) -> keras.Model:
    """``fit`` with a learning rate decaying to zero, so that the weights settle and the moving
    statistics catch up with them, as in a carefully finished training run."""
    keras.utils.set_random_seed(0)
    x, y = digits()
    model = build()
    steps = epochs * int(np.ceil(len(x) / 32))
    rate = keras.optimizers.schedules.CosineDecay(3e-3, steps)
    model.compile(optimizer=keras.optimizers.Adam(rate), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    return model


def trained_file(name: str, cache: Path, epochs: int = 12) -> Path:
    """``trained(MODELS[name], epochs)`` saved as ``.keras`` in ``cache``, trained once for all
    the test processes that share ``cache`` (the first trains it, under a lock, and the others
    read what it saved). Tests copy it before use, as a user's file."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-{epochs}-epochs-keras-{keras.__version__}.keras"
    with open(cache / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            partial = path.with_name(f"{path.stem}-partial.keras")
            trained(MODELS[name], epochs).save(partial)
            os.replace(partial, path)
    return path
