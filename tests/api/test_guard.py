"""The training-time guard: ``fit()`` and custom ``tf.function`` loops on the 10-class digits,
each with and without ``training=True``, and a frozen base. It fires in the broken runs only."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import pytest

import bncheck
from tests.api.conftest import BATCH, batches

tf: Any = pytest.importorskip("tensorflow")

#: Steps between checks in these tests; one epoch of digits at batch 32 is 57 steps.
CHECK_AFTER = 50
STEPS_PER_EPOCH = 57


class CustomStep(keras.Model):
    """A model whose own ``train_step`` calls it with or without ``training=True``, as users
    write when they override ``train_step``."""

    def __init__(self, *args: Any, training: bool | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.training_flag = training

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y = data
        with tf.GradientTape() as tape:
            predictions = self(x, training=self.training_flag)
            loss = self.compute_loss(x=x, y=y, y_pred=predictions)
        gradients = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_variables, strict=True))
        return {"loss": loss}


def block(x: Any, width: int, name: str) -> Any:
    x = keras.layers.Dense(width, name=f"{name}_dense")(x)
    x = keras.layers.BatchNormalization(name=f"{name}_bn")(x)
    return keras.layers.ReLU()(x)


def mlp(training: bool | None = True, frozen_base: bool = False, momentum: float = 0.99) -> Any:
    """Flatten, two Dense+BatchNorm blocks, a 10-way head. ``frozen_base`` puts the first block
    in a frozen sub-model, as transfer learning does."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inputs)
    if frozen_base:
        base_in = keras.Input((64,))
        base = keras.Model(base_in, block(base_in, 64, "base"), name="base")
        base.trainable = False
        x = base(x)
    else:
        x = block(x, 64, "first")
    x = keras.layers.Dense(32, name="second_dense")(x)
    x = keras.layers.BatchNormalization(name="second_bn", momentum=momentum)(x)
    x = keras.layers.ReLU()(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = CustomStep(inputs, outputs, name="mlp", training=training)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def fit(model: Any, digits: Any, guard: Any, epochs: int = 1) -> Any:
    images, labels = digits
    return model.fit(images, labels, batch_size=BATCH, epochs=epochs, verbose=0, callbacks=[guard])


def custom_loop(model: Any, digits: Any, steps: int, training: bool | None, guard: Any) -> None:
    """The loop of seed 004: a tf.function step, the model called with or without training."""
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def train_step(images: Any, labels: Any) -> None:
        with tf.GradientTape() as tape:
            predictions = model(images, training=training)
            loss = loss_fn(labels, predictions)
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))

    for images, labels in batches(digits, steps):
        train_step(images, labels)
        guard.step()


def test_fit_with_training_true_passes(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER, on_problem="raise")
    fit(mlp(training=True), digits, guard, epochs=2)
    assert guard.watch is not None and guard.watch.steps == 2 * STEPS_PER_EPOCH
    result = guard.watch.last_result
    assert result is not None and not result.problem and result.message == ""
    # Checked at 50 and 100 steps, and as fit() ended.
    assert result.steps == 2 * STEPS_PER_EPOCH
    assert result.moved == ("mlp/first_bn", "mlp/second_bn")


def test_fit_whose_train_step_forgets_training_true_raises_at_the_check(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER, on_problem="raise")
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        fit(mlp(training=None), digits, guard)
    result = raised.value.result
    assert result.steps == CHECK_AFTER
    assert result.stuck == ("mlp/first_bn", "mlp/second_bn")
    assert str(raised.value) == (
        f"after {CHECK_AFTER} steps the moving statistics of 2 BatchNorm layers have not moved: "
        "does your training loop call the model with training=True? "
        "(mlp/first_bn, mlp/second_bn)"
    )


def test_a_frozen_base_is_not_expected_to_move(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER)
    # One epoch is short for momentum 0.99: the check as fit() ends may find the head's
    # statistics stale, a separate question; the frozen base is never a problem.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bncheck.BatchNormWarning)
        fit(mlp(training=True, frozen_base=True), digits, guard)
    result = guard.watch.last_result  # type: ignore[union-attr]
    assert result is not None and result.stuck == () and result.findings == ()
    assert result.frozen == ("mlp/base/base_bn",)
    assert result.moved == ("mlp/second_bn",)
    assert "base_bn" not in "".join(result.message.splitlines()[:-1])


@pytest.mark.parametrize(
    ("training", "stuck"),
    [
        (True, ()),
        (None, ("mlp/first_bn", "mlp/second_bn")),
        (False, ("mlp/first_bn", "mlp/second_bn")),
    ],
)
def test_a_custom_tf_function_loop(
    digits: Any, training: bool | None, stuck: tuple[str, ...]
) -> None:
    model = mlp()
    guard = bncheck.keras.watch(model, check_after_steps=CHECK_AFTER, on_problem="raise")
    if not stuck:
        custom_loop(model, digits, 2 * CHECK_AFTER, training, guard)
        assert guard.last_result is not None and not guard.last_result.problem
        return
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        custom_loop(model, digits, 2 * CHECK_AFTER, training, guard)
    assert guard.steps == CHECK_AFTER
    assert raised.value.result.stuck == stuck


def test_a_broken_loop_over_a_frozen_base_names_only_the_trainable_layer(digits: Any) -> None:
    model = mlp(frozen_base=True)
    guard = bncheck.keras.watch(model, check_after_steps=CHECK_AFTER, on_problem="raise")
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        custom_loop(model, digits, CHECK_AFTER, None, guard)
    assert raised.value.result.stuck == ("mlp/second_bn",)
    assert str(raised.value).splitlines() == [
        f"after {CHECK_AFTER} steps the moving statistics of 1 BatchNorm layer have not moved: "
        "does your training loop call the model with training=True? (mlp/second_bn)",
        "(1 BatchNorm layer frozen with trainable=False: not expected to move; not a problem)",
    ]


def test_momentum_one_is_named_as_the_cause(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER, on_problem="raise")
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        fit(mlp(momentum=1.0), digits, guard)
    result = raised.value.result
    assert (result.stuck, result.fixed_by_momentum) == ((), ("mlp/second_bn",))
    assert result.moved == ("mlp/first_bn",)
    # BN008 says the same about the same layer, so it is folded into the movement line.
    assert result.findings == ()
    assert str(raised.value) == (
        "the moving statistics of 1 BatchNorm layer cannot move: momentum=1.0 keeps them fixed; "
        "use momentum 0.99, and trainable=False to freeze a layer (mlp/second_bn)"
    )


def test_other_failing_findings_of_the_static_rules_are_problems(digits: Any) -> None:
    model = mlp()
    guard = bncheck.keras.watch(model, check_after_steps=CHECK_AFTER, on_problem="raise")
    custom_loop(model, digits, CHECK_AFTER - 1, True, guard)
    model.get_layer("second_bn").moving_variance.assign(np.full(32, np.nan, "float32"))
    with pytest.raises(bncheck.BatchNormGuardError) as raised:
        guard.step()
    assert [(f.rule, f.layer) for f in raised.value.result.findings] == [("BN003", "mlp/second_bn")]
    assert str(raised.value).startswith("BN003 non-finite-stats at mlp/second_bn: ")


def test_warn_warns_once_per_problem(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(mlp(training=None), digits, guard, epochs=3)
    ours = [w for w in caught if issubclass(w.category, bncheck.BatchNormWarning)]
    assert len(ours) == 1
    assert str(ours[0].message).startswith(f"after {CHECK_AFTER} steps the moving statistics")
    assert guard.watch is not None and guard.watch.steps == 3 * STEPS_PER_EPOCH


def test_a_warning_points_at_the_line_that_stepped(digits: Any) -> None:
    model = mlp()
    guard = bncheck.keras.watch(model, check_after_steps=1)
    ((images, _),) = batches(digits, 1)
    model(images)
    with pytest.warns(bncheck.BatchNormWarning) as record:
        guard.step()
    assert record[0].filename == __file__


class CountSteps(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps += 1


def test_stop_warns_and_ends_fit_at_the_check(digits: Any) -> None:
    guard = bncheck.keras.BatchNormGuard(check_after_steps=CHECK_AFTER, on_problem="stop")
    counter = CountSteps()
    images, labels = digits
    model = mlp(training=None)
    with pytest.warns(bncheck.BatchNormWarning, match="have not moved"):
        model.fit(images, labels, batch_size=BATCH, epochs=3, verbose=0, callbacks=[guard, counter])
    # The check runs as step 51 begins; fit stops when that step ends.
    assert counter.steps == CHECK_AFTER + 1
    assert model.stop_training


def test_the_context_manager_checks_when_the_block_ends(digits: Any) -> None:
    model = mlp()
    with pytest.raises(bncheck.BatchNormGuardError, match="after 10 steps"):  # noqa: SIM117
        with bncheck.keras.watch(model, on_problem="raise") as guard:
            custom_loop(model, digits, 10, None, guard)
    assert guard.last_result is not None and guard.last_result.steps == 10
    with bncheck.keras.watch(model, on_problem="raise") as guard:
        custom_loop(model, digits, 10, True, guard)
    assert guard.last_result is not None and not guard.last_result.problem


def test_the_context_manager_does_not_check_after_an_exception(digits: Any) -> None:
    model = mlp()
    with pytest.raises(KeyboardInterrupt):  # noqa: SIM117
        with bncheck.keras.watch(model, on_problem="raise") as guard:
            custom_loop(model, digits, 3, None, guard)
            raise KeyboardInterrupt
    assert guard.last_result is None


def test_check_without_counted_steps_says_since_when(digits: Any) -> None:
    model = mlp()
    guard = bncheck.keras.watch(model, on_problem="raise")
    for images, _ in batches(digits, 5):
        model(images)
    with pytest.raises(bncheck.BatchNormGuardError, match="^since the guard started the moving"):
        guard.check()


def test_layers_built_after_the_watch_began_are_compared_with_their_initial_values(
    digits: Any,
) -> None:
    model = keras.Sequential([keras.layers.Flatten(), keras.layers.BatchNormalization(name="bn")])
    guard = bncheck.keras.watch(model, on_problem="raise")
    ((images, _),) = batches(digits, 1)
    model(images)
    with pytest.raises(bncheck.BatchNormGuardError, match="1 BatchNorm layer have not moved"):
        guard.check()
    model(images, training=True)
    assert not guard.check().problem


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"check_after_steps": 0}, ValueError, "check_after_steps must be at least 1, not 0"),
        ({"check_after_steps": 2.5}, TypeError, "check_after_steps must be an int, not 2.5"),
        ({"on_problem": "ignore"}, ValueError, "on_problem must be one of 'warn', 'raise', 'stop'"),
    ],
)
def test_bad_arguments_are_refused(
    arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    makers: list[Callable[..., object]] = [
        bncheck.keras.BatchNormGuard,
        lambda **kwargs: bncheck.keras.watch(mlp(), **kwargs),
    ]
    for make in makers:
        with pytest.raises(error, match=message):
            make(**arguments)
