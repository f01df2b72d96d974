"""Per-channel batch moments of BatchNorm inputs, summed in float64 and combined across ranks.

Each call of a watched module adds its input's batch moments, pooled over every axis but the
channel axis 1 (the axes PyTorch's BatchNorm1d, 2d and 3d normalise over), weighted by the
batch's sample count as ``bncheck.probe.measure.MomentSums`` weights them: the sum of the means,
of their squares, of the unbiased variances and of their squares, the weight and the calls.
The sums stay on the module's device until they are read, so summing costs no synchronisation,
and under ``torch.distributed`` one ``all_reduce`` of all of them makes every rank's sums those
of all ranks' batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from bncheck.probe.measure import MomentSums

#: Rows of a layer's sums: n*mean, n*mean^2, n*var, n*var^2 (per channel), then weight, calls.
_ROWS = 4


def batch_moments(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(mean, unbiased variance, samples) of one BatchNorm input per channel, in float64."""
    values = inputs.detach().to(torch.float64)
    axes = [0, *range(2, values.dim())]
    variance, mean = torch.var_mean(values, dim=axes, correction=0)
    count = values.numel() // max(values.shape[1], 1)
    return mean, variance * (count / max(count - 1, 1)), int(values.shape[0])


class LayerSums:
    """One layer's sums, on its device, in float64."""

    def __init__(self) -> None:
        self.values: torch.Tensor | None = None
        """``(4, channels)``: n*mean, n*mean^2, n*var, n*var^2."""
        self.counts: torch.Tensor | None = None
        """``(2,)``: the weight (samples) and the calls."""

    def add(self, inputs: torch.Tensor) -> None:
        mean, variance, samples = batch_moments(inputs)
        n = float(samples)
        rows = torch.stack((n * mean, n * mean**2, n * variance, n * variance**2))
        counts = torch.tensor([n, 1.0], dtype=torch.float64, device=rows.device)
        if self.values is None or self.counts is None:
            self.values, self.counts = rows, counts
        else:
            self.values += rows
            self.counts += counts

    def moment_sums(self) -> MomentSums:
        """The sums as the probe's ``MomentSums``, whose ``population()`` is the estimate."""
        assert self.values is not None and self.counts is not None
        values = self.values.cpu().numpy()
        weight, calls = self.counts.cpu().tolist()
        return MomentSums(
            mean=values[0],
            mean_squares=values[1],
            variance=values[2],
            variance_squares=values[3],
            weight=int(round(weight)),
            calls=int(round(calls)),
        )


def all_reduce(sums: Mapping[str, LayerSums], channels: Mapping[str, int], device: Any) -> None:
    """Sum every layer's sums over the ranks of the default process group, in one call. A rank
    whose batches never reached a layer contributes zeros. ``device`` is where the collective
    runs (the module's device for NCCL, the CPU for gloo)."""
    import torch.distributed as dist

    parts = []
    for path, width in channels.items():
        layer = sums.get(path)
        if layer is None or layer.values is None or layer.counts is None:
            parts.append(torch.zeros(_ROWS * width + 2, dtype=torch.float64, device=device))
        else:
            parts.append(torch.cat((layer.values.reshape(-1), layer.counts)).to(device))
    if not parts:
        return
    combined = torch.cat(parts)
    dist.all_reduce(combined, op=dist.ReduceOp.SUM)
    offset = 0
    for path, width in channels.items():
        size = _ROWS * width + 2
        chunk = combined[offset : offset + size]
        offset += size
        layer = sums.setdefault(path, LayerSums()) if isinstance(sums, dict) else sums[path]
        layer.values = chunk[: _ROWS * width].reshape(_ROWS, width).clone()
        layer.counts = chunk[_ROWS * width :].clone()


def reduce_floats(values: list[float], device: Any) -> list[float]:
    """Sum plain figures over the ranks (in float64), for the verification's totals."""
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return [float(value) for value in tensor.cpu().tolist()]


def as_numpy(values: torch.Tensor) -> np.ndarray:
    """A model output or labels as a NumPy array, on the CPU (float outputs as float32)."""
    tensor = values.detach()
    if tensor.is_floating_point() and tensor.dtype != torch.float64:
        tensor = tensor.float()
    return np.asarray(tensor.cpu().numpy())
