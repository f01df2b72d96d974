"""One rank of the distributed recalibration test: a gloo process group on localhost, the
stale network wrapped in ``DistributedDataParallel``, every ``world``-th batch of the data."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

import bncheck.torch
from tests.torch_api import nets

#: Batch size: 1,400 training digits make 46 batches of 30 and one of 20, shared unevenly.
SIZE = 30


def run(rank: int, world: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        model = nets.net(momentum=0.001)
        model.load_state_dict(torch.load(Path(folder) / "stale.pt", weights_only=True))
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        train, held_out = nets.split()
        mine = nets.batches(train, size=SIZE)[rank::world]
        checked = nets.batches(held_out, size=SIZE)[rank::world]
        result = bncheck.torch.recalibrate(
            wrapped, mine, validate=checked, save=Path(folder) / "fixed.pt"
        )
        metric = result.verification.metric if result.verification else None
        torch.save(
            {
                "mean": {p: torch.tensor(s.mean) for p, s in result.statistics.items()},
                "variance": {p: torch.tensor(s.variance) for p, s in result.statistics.items()},
                "batches": result.batches,
                "samples": result.samples,
                "stored": None if metric is None else metric.stored,
                "reestimated": None if metric is None else metric.reestimated,
                "written_to": result.written_to,
                "writer": result.writer,
                "mine": len(mine),
            },
            os.path.join(folder, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()
