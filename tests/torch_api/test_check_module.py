"""``bncheck.torch.check_module``: the report ``bncheck inspect`` gives for the module's saved
state dict, from the live module, for every kind of BatchNorm module and wrapper."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import bncheck
import bncheck.torch
from tests.torch_api import nets


@pytest.fixture(scope="module")
def eval_trained() -> nn.Module:
    train, _ = nets.split()
    return nets.train(nets.net(), nets.batches(train), epochs=1, train_mode=False)


def findings(report: bncheck.Report) -> list[tuple[str, str | None, str]]:
    [model] = report.models
    return [(f.rule, f.layer, str(f.severity)) for f in model.findings]


def test_trained_in_eval_mode_is_judged_as_its_saved_file(
    eval_trained: nn.Module, tmp_path: Path
) -> None:
    live = bncheck.torch.check_module(eval_trained)
    torch.save(eval_trained.state_dict(), tmp_path / "model.pt")
    saved = bncheck.inspect(tmp_path / "model.pt")
    assert findings(live) == findings(saved)
    assert findings(live) == [("BN001", "1", "error"), ("BN001", "4", "error")]
    [model] = live.models
    assert model.format == "live" and live.exit_code == 1
    message = model.findings[0].message
    assert "running_mean" in message and "weight" in message


def test_a_module_trained_in_training_mode_passes() -> None:
    train, _ = nets.split()
    healthy = nets.train(nets.net(), nets.batches(train)[:20], epochs=1)
    report = bncheck.torch.check_module(healthy)
    assert report.exit_code == 0
    [model] = report.models
    layers = model.description.layers if model.description else ()
    assert [layer.num_batches_tracked for layer in layers] == [20, 20]
    assert all(layer.variance_estimator == "unbiased" for layer in layers)


def test_momentum_zero_none_and_keras_momentum_in_pytorch() -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(4, momentum=0.0), nn.BatchNorm1d(4, momentum=None), nn.BatchNorm1d(4)
    )
    copied = model[2]
    assert isinstance(copied, nn.BatchNorm1d)
    copied.momentum = 0.99  # Keras's convention copied into PyTorch
    report = bncheck.torch.check_module(model)
    [result] = report.models
    # Fresh layers: BN002 (never trained) on each, and the momentum rules.
    rules = {(f.rule, f.layer) for f in result.findings if f.rule != "BN002"}
    assert rules == {("BN008", "0"), ("BN009", "2")}
    assert result.description is not None
    assert any("momentum=None in 1" in note for note in result.description.notes)


def test_track_running_stats_false_is_bn022() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(3, track_running_stats=False))
    [result] = bncheck.torch.check_module(model).models
    assert [(f.rule, f.layer) for f in result.findings] == [("BN022", "1")]
    assert "track_running_stats=False" in result.findings[0].message


class FrozenBatchNorm2d(nn.Module):
    """torchvision's FrozenBatchNorm2d: four buffers and no counter."""

    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(channels))
        self.register_buffer("bias", torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))


def test_frozen_sync_lazy_and_wrappers(tmp_path: Path) -> None:
    frozen = FrozenBatchNorm2d(3)
    frozen.weight.fill_(2.0)  # statistics folded into weight and bias, at 0 and 1 on purpose
    sync = nn.SyncBatchNorm(3)
    with torch.no_grad():  # as after training
        assert sync.running_mean is not None and sync.num_batches_tracked is not None
        sync.running_mean.fill_(0.5), sync.weight.fill_(1.5), sync.num_batches_tracked.fill_(9)
    model = nn.Sequential(frozen, sync, nn.LazyBatchNorm2d())
    for wrapped in (model, nn.DataParallel(model), torch.compile(model)):
        [result] = bncheck.torch.check_module(wrapped).models
        assert result.description is not None
        layers = {layer.path: layer for layer in result.description.layers}
        assert layers["0"].class_name == "FrozenBatchNorm2d"
        assert layers["0"].num_batches_tracked is None
        assert layers["1"].synchronized
        assert "2" not in layers
        notes = result.description.notes
        assert any("2 (LazyBatchNorm2d) has no running statistics yet" in n for n in notes)
        assert [(f.rule, f.layer, str(f.severity)) for f in result.findings] == [
            ("BN001", "0", "info")
        ]
    torch.save({"0." + k: v for k, v in frozen.state_dict().items()}, tmp_path / "frozen.pt")
    [saved] = bncheck.inspect(tmp_path / "frozen.pt").models
    assert [(f.rule, str(f.severity)) for f in saved.findings] == [("BN001", "info")]


def test_not_a_module() -> None:
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        bncheck.torch.check_module("model.pt")
