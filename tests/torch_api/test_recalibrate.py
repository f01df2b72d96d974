"""``bncheck.torch.recalibrate``: PyTorch's own update over the same batches, the stale network
it repairs (and writes, judged healthy by ``bncheck inspect``), the fine-tuned network it
refuses, and a module left as it was."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import bncheck.torch
from bncheck.errors import UsageError
from tests.torch_api import nets


@pytest.fixture(scope="module")
def data() -> tuple[nets.Batches, nets.Batches]:
    train, held_out = nets.split()
    return nets.batches(train), nets.batches(held_out)


@pytest.fixture(scope="module")
def stale(data: tuple[nets.Batches, nets.Batches]) -> nn.Module:
    """Trained with momentum 0.001 (Keras's 0.999 copied): the running statistics lag far
    behind the weights."""
    return nets.train(nets.net(momentum=0.001), data[0], epochs=2)


@pytest.mark.parametrize(
    ("layer", "shape"),
    [
        (nn.BatchNorm1d(3), (16, 3)),
        (nn.BatchNorm1d(3), (16, 3, 7)),  # sequences: pooled over samples and positions
        (nn.BatchNorm2d(3), (16, 3, 5, 4)),
        (nn.BatchNorm3d(3), (16, 3, 2, 3, 4)),
    ],
)
def test_equals_pytorchs_own_cumulative_update(layer: nn.Module, shape: tuple[int, ...]) -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(shape[-1], shape[-1]), layer)
    loader = [torch.randn(shape) * 3 + 2 for _ in range(6)]
    result = bncheck.torch.recalibrate(model, loader, force=True)
    reference = nn.Sequential(nn.Linear(shape[-1], shape[-1]), type(layer)(3, momentum=None))
    reference.load_state_dict(model.state_dict())
    torch.optim.swa_utils.update_bn(loader, reference)
    new = result.statistics["1"]
    torch.testing.assert_close(torch.tensor(new.mean).float(), reference[1].running_mean)
    torch.testing.assert_close(torch.tensor(new.variance).float(), reference[1].running_var)
    assert result.batches == 6 and result.samples == 96


def test_stale_network_is_repaired_and_written(
    stale: nn.Module, data: tuple[nets.Batches, nets.Batches], tmp_path: Path
) -> None:
    train, held_out = data
    before = nets.accuracy(stale, held_out)
    original = {k: v.clone() for k, v in stale.state_dict().items()}
    saved = tmp_path / "fixed.pt"
    result = bncheck.torch.recalibrate(stale, train, validate=held_out, save=saved)
    assert result.refusal is None and result.written_to == str(saved)
    metric = result.verification.metric if result.verification else None
    assert metric is not None and metric.name == "accuracy"
    assert metric.stored == pytest.approx(before)
    # The module itself is unchanged without in_place.
    for key, value in stale.state_dict().items():
        assert torch.equal(value, original[key]), key
    written = torch.load(saved, weights_only=True)
    repaired = nets.net(momentum=0.001)
    repaired.load_state_dict(written)
    after = nets.accuracy(repaired, held_out)
    assert after == pytest.approx(metric.reestimated) and after > before + 0.2
    for key, value in written.items():
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, original[key]), key
    assert written["1.num_batches_tracked"].item() == len(train)
    cli = subprocess.run(
        [sys.executable, "-m", "bncheck", "inspect", str(saved)], capture_output=True, text=True
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


def test_safetensors_and_in_place(
    stale: nn.Module, data: tuple[nets.Batches, nets.Batches], tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    train, held_out = data
    model = nets.net(momentum=0.001)
    model.load_state_dict(stale.state_dict())
    model.train()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    saved = tmp_path / "fixed.safetensors"
    result = bncheck.torch.recalibrate(model, train, validate=held_out, save=saved, in_place=True)
    assert result.refusal is None
    written = load_file(saved)
    for key, value in model.state_dict().items():
        assert torch.equal(written[key], value), key
        if "running" not in key and "tracked" not in key:
            assert torch.equal(value, original[key]), key
    assert model.training and all(
        m.momentum == 0.001 for m in model if isinstance(m, nn.BatchNorm2d)
    )
    assert result.verification is not None and result.verification.metric is not None
    assert nets.accuracy(model, held_out) == pytest.approx(result.verification.metric.reestimated)
    assert bncheck.inspect(saved).exit_code == 0


def test_fine_tuned_in_eval_mode_is_refused(
    data: tuple[nets.Batches, nets.Batches], tmp_path: Path
) -> None:
    """Trained on the digits, then fine-tuned in eval() on their negatives: the layers after
    each BatchNorm learned the new data with its old statistics, and new ones break them."""
    train, held_out = nets.split()
    model = nets.train(nets.net(), data[0], epochs=3)
    new_train = nets.batches(train, change=nets.inverted)
    new_held_out = nets.batches(held_out, change=nets.inverted)
    nets.train(model, new_train, epochs=3, train_mode=False, lr=3e-3)
    before = nets.accuracy(model, new_held_out)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    saved = tmp_path / "worse.pt"
    result = bncheck.torch.recalibrate(
        model, new_train, validate=new_held_out, save=saved, in_place=True
    )
    metric = result.verification.metric if result.verification else None
    assert metric is not None and metric.stored == pytest.approx(before)
    assert metric.reestimated is not None and metric.reestimated < metric.stored
    assert result.refusal is not None and "would fall" in result.refusal
    assert result.written_to is None and not saved.exists()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_without_labels_too_many_changed_predictions_are_unverified(
    stale: nn.Module, data: tuple[nets.Batches, nets.Batches], tmp_path: Path
) -> None:
    unlabelled = [images for images, _ in data[0]]
    saved = tmp_path / "unverified.pt"
    result = bncheck.torch.recalibrate(stale, unlabelled, save=saved)
    check = result.verification
    assert check is not None and check.metric is None and not check.held_out
    assert check.changed_predictions is not None and check.changed_predictions > 0.1
    assert result.refusal is not None and "would change" in result.refusal
    assert not saved.exists()
    forced = bncheck.torch.recalibrate(stale, unlabelled, save=saved, force=True)
    assert forced.written_to == str(saved) and saved.exists()


def test_untouched_layers_keep_their_statistics(data: tuple[nets.Batches, nets.Batches]) -> None:
    model = nets.train(nets.net(), data[0][:10], epochs=1, train_mode=False)
    result = bncheck.torch.recalibrate(model, data[0], validate=data[1])
    assert [change.status for change in result.layers] == ["kept (never updated)"] * 2
    assert result.verification is None and result.refusal is not None


def test_usage_errors(stale: nn.Module, data: tuple[nets.Batches, nets.Batches]) -> None:
    with pytest.raises(UsageError, match="name the file .pt"):
        bncheck.torch.recalibrate(stale, data[0], save="fixed.keras")
    with pytest.raises(UsageError, match="no such directory"):
        bncheck.torch.recalibrate(stale, data[0], save="/nonexistent/dir/fixed.pt")
    with pytest.raises(UsageError, match="validate has no labels"):
        bncheck.torch.recalibrate(stale, data[0], validate=[x for x, _ in data[1]])
    with pytest.raises(UsageError, match="inputs are str"):
        bncheck.torch.recalibrate(stale, ["not a tensor"])
