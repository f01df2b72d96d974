"""Run under KERAS_BACKEND=jax by test_jax.py: check_model and the guard on the JAX backend.

Prints one JSON object with what each case found.
"""

from __future__ import annotations

import json
import sys
import warnings
from typing import Any

import jax
import keras
from sklearn.datasets import load_digits

import bncheck

assert keras.backend.backend() == "jax"

data = load_digits()
images = (data.images / 16.0).astype("float32")[..., None]
labels = data.target.astype("int32")


def mlp(momentum: float = 0.99) -> Any:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(64)(x)
    x = keras.layers.BatchNormalization(name="first_bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Dense(32)(x)
    x = keras.layers.BatchNormalization(name="second_bn", momentum=momentum)(x)
    x = keras.layers.ReLU()(x)
    model = keras.Model(inputs, keras.layers.Dense(10)(x), name="mlp")
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit(model: Any) -> dict[str, Any]:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=50, on_problem="raise")
    try:
        model.fit(images, labels, batch_size=32, epochs=2, verbose=0, callbacks=[guard])
    except bncheck.BatchNormGuardError as error:
        return {"raised": str(error), "steps": error.result.steps}
    assert guard.watch is not None and guard.watch.last_result is not None
    result = guard.watch.last_result
    return {"raised": None, "steps": result.steps, "moved": list(result.moved)}


def stateless_loop(training: bool) -> dict[str, Any]:
    """A custom JAX loop over model.stateless_call, writing the state back every step."""
    model = mlp()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compute_loss(trainable: Any, non_trainable: Any, x: Any, y: Any) -> Any:
        y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=training)
        return loss_fn(y, y_pred), non_trainable

    grad_fn = jax.value_and_grad(compute_loss, has_aux=True)

    @jax.jit
    def train_step(state: Any, x: Any, y: Any) -> Any:
        trainable, non_trainable, optimizer_vars = state
        (_, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
        trainable, optimizer_vars = optimizer.stateless_apply(optimizer_vars, grads, trainable)
        return trainable, non_trainable, optimizer_vars

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    guard = bncheck.keras.watch(model, check_after_steps=50)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for start in range(0, 50 * 32, 32):
            state = train_step(state, images[start : start + 32], labels[start : start + 32])
            for variable, value in zip(model.non_trainable_variables, state[1], strict=True):
                variable.assign(value)
            guard.step()
    found = [str(w.message) for w in caught if issubclass(w.category, bncheck.BatchNormWarning)]
    return {"warnings": found}


fixture = sys.argv[1]
loaded = keras.models.load_model(fixture, compile=False)
print(
    json.dumps(
        {
            "backend": keras.backend.backend(),
            "fixture": [(f.rule, f.layer) for f in bncheck.check_model(loaded).findings],
            "fixture_file": [(f.rule, f.layer) for f in bncheck.inspect(fixture).findings],
            "fit_healthy": fit(mlp()),
            "fit_momentum_one": fit(mlp(momentum=1.0)),
            "loop_training": stateless_loop(training=True),
            "loop_inference": stateless_loop(training=False),
        }
    )
)
