"""``bncheck.torch.watch`` and the Lightning ``BatchNormGuard`` in training loops on the
10-class digits: they fire at the first check in the broken runs, stay silent in the healthy
one, and leave no hook behind."""

from __future__ import annotations

import sys
import types
import warnings
from collections.abc import Iterator

import pytest
import torch
from torch import nn

import bncheck.torch
from bncheck.errors import UsageError
from tests.torch_api import nets

#: Steps between checks: one epoch of 1,400 digits at batch 32 is 44 steps.
CHECK_AFTER = 40


@pytest.fixture(scope="module")
def train_batches() -> nets.Batches:
    return nets.batches(nets.split()[0])


def test_training_in_eval_mode_fires_at_the_first_check(train_batches: nets.Batches) -> None:
    model = nets.net()
    g = bncheck.torch.watch(model, check_after_steps=CHECK_AFTER, on_problem="raise")
    with pytest.raises(bncheck.torch.BatchNormGuardError) as raised, g:
        nets.train(model, train_batches, epochs=2, train_mode=False, after_step=g.step)
    assert g.steps == CHECK_AFTER
    message = str(raised.value)
    assert message.startswith(f"after {CHECK_AFTER} steps, 2 BatchNorm modules never ran in")
    assert "model.train()" in message and "running_mean" in message
    assert raised.value.result.stuck == ("1", "4")
    assert not model[1]._forward_hooks and not model[4]._forward_hooks


def test_healthy_training_is_silent(train_batches: nets.Batches) -> None:
    model = nets.net()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bncheck.torch.BatchNormWarning)
        with bncheck.torch.watch(model, check_after_steps=CHECK_AFTER) as guard:
            # with evaluation in eval() between epochs, as real loops do
            for _ in range(2):
                nets.train(model, train_batches, epochs=1, after_step=guard.step)
                nets.accuracy(model, train_batches[:3])
    result = guard.last_result
    assert result is not None and not result.problem and result.moved == ("1", "4")
    assert guard.steps == 88


def test_early_checks_let_the_statistics_warm_up(train_batches: nets.Batches) -> None:
    """Checked every 10 steps from the start, the running statistics are still moving from 0
    and 1 towards the data, as they should: no warning until the default momentum has had the
    steps to forget them."""
    model = nets.net()
    with warnings.catch_warnings():
        warnings.simplefilter("error", bncheck.torch.BatchNormWarning)
        with bncheck.torch.watch(model, check_after_steps=10) as guard:
            nets.train(model, train_batches, epochs=2, after_step=guard.step)
    assert guard.last_result is not None and not guard.last_result.problem


def test_momentum_zero_warns_once_and_stops(train_batches: nets.Batches) -> None:
    model = nets.net(momentum=0.0)
    g = bncheck.torch.watch(model, check_after_steps=CHECK_AFTER, on_problem="stop")
    with pytest.warns(bncheck.torch.BatchNormWarning, match="momentum=0 keeps them fixed") as w, g:
        nets.train(model, train_batches, epochs=2, after_step=g.step)
    assert len([x for x in w if issubclass(x.category, bncheck.torch.BatchNormWarning)]) == 1
    assert g.should_stop and g.last_result is not None
    assert g.last_result.fixed_by_momentum == ("1", "4")


def test_stale_running_statistics_are_found(train_batches: nets.Batches) -> None:
    """Trained right, then run on inverted digits with weight and bias frozen in place but
    trainable: the running statistics no longer describe the batches."""
    model = nets.train(nets.net(), train_batches, epochs=1)
    inverted = [(nets.inverted(x), y) for x, y in train_batches]
    guard = bncheck.torch.watch(model, check_after_steps=CHECK_AFTER)
    model.eval()
    with torch.no_grad(), pytest.warns(bncheck.torch.BatchNormWarning, match="do not fit the"):
        for images, _ in inverted[:CHECK_AFTER]:
            model(images)
            guard.step()
    guard.close()
    result = guard.last_result
    assert result is not None and "1" in {item.layer for item in result.stale}
    assert "bncheck.torch.recalibrate" in result.message
    assert "eval mode (model.eval())" in result.message


def test_hooks_are_removed(train_batches: nets.Batches) -> None:
    model = nets.net()
    hooks = [len(m._forward_hooks) for m in model]
    with bncheck.torch.watch(model) as guard:
        assert len(model[1]._forward_hooks) == 1 + hooks[1]
        nets.train(model, train_batches[:2], epochs=1, after_step=guard.step)
    assert [len(m._forward_hooks) for m in model] == hooks
    with pytest.raises(ValueError, match="on_problem"):
        bncheck.torch.watch(model, on_problem="explode")  # type: ignore[arg-type]


@pytest.fixture
def fake_lightning(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """A stand-in for ``lightning.pytorch`` with its ``Callback`` base class: Lightning calls
    the callback's hooks with these signatures."""

    class Callback:
        pass

    package = types.ModuleType("lightning")
    module = types.ModuleType("lightning.pytorch")
    module.Callback = Callback  # type: ignore[attr-defined]
    package.pytorch = module  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lightning", package)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", module)
    yield Callback


def test_lightning_callback_stops_the_trainer(
    fake_lightning: type, train_batches: nets.Batches
) -> None:
    from bncheck.torch.lightning import BatchNormGuard

    guard = BatchNormGuard(check_after_steps=CHECK_AFTER, on_problem="stop")
    assert isinstance(guard, fake_lightning) and isinstance(guard, BatchNormGuard)
    trainer = types.SimpleNamespace(should_stop=False)
    model = nets.net()
    guard.on_train_start(trainer, model)
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    with pytest.warns(bncheck.torch.BatchNormWarning, match="never ran in training mode"):
        for index, (images, labels) in enumerate(train_batches):
            model.eval()
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            guard.on_train_batch_end(trainer, model, loss, (images, labels), index)
            if trainer.should_stop:
                break
    assert index == CHECK_AFTER - 1
    guard.on_train_end(trainer, model)
    assert not model[1]._forward_hooks


def test_lightning_guard_imports_without_lightning(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    from bncheck.torch.lightning import BatchNormGuard

    with pytest.raises(UsageError, match="pip install lightning"):
        BatchNormGuard()
