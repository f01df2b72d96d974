"""Recalibration under ``torch.distributed``: 2 and 4 gloo processes on localhost, each with
its own share of the batches (uneven counts, a shorter last batch), give the single-process
estimate over the same batches; only rank 0 writes."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import bncheck.torch
from tests.torch_api import distributed_child, nets


@pytest.fixture(scope="module")
def stale_and_single(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module, object]:
    folder = tmp_path_factory.mktemp("stale")
    train, held_out = nets.split()
    model = nets.train(nets.net(momentum=0.001), nets.batches(train), epochs=1)
    torch.save(model.state_dict(), folder / "stale.pt")
    size = distributed_child.SIZE
    single = bncheck.torch.recalibrate(
        model, nets.batches(train, size=size), validate=nets.batches(held_out, size=size)
    )
    return folder / "stale.pt", model, single


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_equal_one_process(
    world: int, stale_and_single: tuple[Path, nn.Module, object], tmp_path: Path
) -> None:
    stale, _, single = stale_and_single
    (tmp_path / "stale.pt").write_bytes(stale.read_bytes())
    # Spawned, not forked: a fork of a process whose TensorFlow or torch threads already run
    # (the rest of the suite loads both) can deadlock in the child. The ranks share nothing but
    # the process group.
    mp.start_processes(
        distributed_child.run,
        args=(world, free_port(), str(tmp_path)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world)]
    assert len({rank["mine"] for rank in ranks}) == 2  # 47 batches: uneven shares
    assert single.refusal is None  # type: ignore[attr-defined]
    metric = single.verification.metric  # type: ignore[attr-defined]
    for rank in ranks:
        assert rank["batches"] == single.batches  # type: ignore[attr-defined]
        assert rank["samples"] == single.samples == 1400  # type: ignore[attr-defined]
        for path, population in single.statistics.items():  # type: ignore[attr-defined]
            torch.testing.assert_close(
                rank["mean"][path], torch.tensor(population.mean), rtol=1e-5, atol=1e-5
            )
            torch.testing.assert_close(
                rank["variance"][path], torch.tensor(population.variance), rtol=1e-5, atol=1e-5
            )
        assert rank["stored"] == pytest.approx(metric.stored)
        assert rank["reestimated"] == pytest.approx(metric.reestimated)
    assert ranks[0]["written_to"] == str(tmp_path / "fixed.pt")
    assert all(r["written_to"] is None and r["writer"] == "rank 0" for r in ranks[1:])
    written = torch.load(tmp_path / "fixed.pt", weights_only=True)
    assert all(not key.startswith("module.") for key in written)
    torch.testing.assert_close(
        written["4.running_var"],
        torch.tensor(single.statistics["4"].variance).float(),  # type: ignore[attr-defined]
    )
