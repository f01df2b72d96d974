"""Find the BatchNorm modules of a live PyTorch module and describe them as a file's reader would.

The description is the one ``bncheck inspect`` builds from a saved state dict or pickled model
(``readers.torch_layers``): the same ``BNLayer`` fields, PyTorch's conventions (``momentum`` is
the weight of each new batch, ``running_var`` is unbiased) and its words, so that the rules judge
a live module exactly as they judge its file. Wrappers (``DataParallel``,
``DistributedDataParallel``, ``torch.compile``) are looked through to the module they run.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bncheck.model import BatchStatisticsLayer, BNLayer, InitialValues, ModelDescription
from bncheck.readers.pytorch.torch_layers import SYNCHRONIZED_CLASSES, pre_041_note
from bncheck.records import record

#: ``ModelDescription.format`` of a model described in memory, as for live Keras models.
LIVE_FORMAT = "live"

#: The buffers a FrozenBatchNorm-style module (torchvision, detectron2, timm) keeps in place of
#: a BatchNorm's parameters and running statistics.
FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")

#: What each kind of module is, for ``BatchNormModule.kind``.
TRACKING = "tracking"
"""A ``_BatchNorm`` with running statistics: normalises with them in ``eval()``."""
BATCH_STATISTICS = "batch statistics"
"""``track_running_stats=False``: normalises every batch with its own statistics."""
FROZEN = "frozen"
"""FrozenBatchNorm-style: fixed buffers, whatever the mode."""
LAZY = "lazy"
"""A ``LazyBatchNorm`` that has not run yet: no statistics to judge."""


@record
class BatchNormModule:
    """One BatchNorm module of a live model."""

    path: str
    """Its name in ``module.named_modules()`` of the unwrapped module: the state dict's prefix."""
    module: nn.Module
    kind: str
    """``tracking``, ``batch statistics``, ``frozen`` or ``lazy``."""


def unwrap(module: nn.Module) -> nn.Module:
    """The module a wrapper runs: ``DataParallel`` and ``DistributedDataParallel`` keep it in
    ``.module``, ``torch.compile`` in ``._orig_mod``."""
    seen: set[int] = set()
    while id(module) not in seen:
        seen.add(id(module))
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
            continue
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
    return module


def batchnorm_modules(module: nn.Module) -> list[BatchNormModule]:
    """Every BatchNorm module of ``module`` (unwrapped), in ``named_modules()`` order."""
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"expected a torch.nn.Module, not {type(module).__name__}; "
            "for a saved file use bncheck.inspect(path)"
        )
    found = []
    for path, child in unwrap(module).named_modules():
        kind = _kind(child)
        if kind is not None:
            found.append(BatchNormModule(path, child, kind))
    return found


def _kind(module: nn.Module) -> str | None:
    if isinstance(module, _BatchNorm):
        if isinstance(module.running_mean, nn.parameter.UninitializedBuffer) or isinstance(
            module.weight, nn.parameter.UninitializedParameter
        ):
            return LAZY
        if not module.track_running_stats or module.running_mean is None:
            return BATCH_STATISTICS
        return TRACKING
    buffers = module._buffers
    if all(isinstance(buffers.get(name), torch.Tensor) for name in FROZEN_BUFFERS):
        return FROZEN
    return None


def describe(module: nn.Module) -> ModelDescription:
    """The BatchNorm modules of ``module`` with their current tensors, flags and settings."""
    layers: list[BNLayer] = []
    batch_statistics: list[BatchStatisticsLayer] = []
    notes: list[str] = []
    found = batchnorm_modules(module)
    for entry in found:
        if entry.kind == LAZY:
            notes.append(
                f"{entry.path} ({type(entry.module).__name__}) has no running statistics yet: "
                "a lazy module gets its tensors at its first forward call, so it is not judged"
            )
        elif entry.kind == BATCH_STATISTICS:
            weight = getattr(entry.module, "weight", None)
            batch_statistics.append(
                BatchStatisticsLayer(
                    path=entry.path,
                    class_name=type(entry.module).__name__,
                    framework="pytorch",
                    evidence="track_running_stats=False",
                    channels=weight.numel()
                    if isinstance(weight, torch.Tensor)
                    else getattr(entry.module, "num_features", None),
                )
            )
        else:
            layers.append(bn_layer(entry))
    cumulative = [e.path for e in found if e.kind == TRACKING and e.module.momentum is None]
    if cumulative:
        notes.append(
            f"momentum=None in {_listed(cumulative)}: the running statistics are the cumulative "
            "average of every batch since num_batches_tracked was 0, not a moving average"
        )
    tracking = [e for e in found if e.kind == TRACKING]
    training = [e.path for e in tracking if e.module.training]
    if training and len(training) < len(tracking):
        notes.append(
            f"{len(training)} of {len(tracking)} BatchNorm modules are in training mode "
            f"({_listed(training)}), the others in eval mode: model.train() and model.eval() "
            "set every module's mode, a later module.eval() only its own"
        )
    reset = pre_041_note(layers)
    if reset is not None:
        notes.append(reset)
    return ModelDescription(
        path=type(unwrap(module)).__name__,
        format=LIVE_FORMAT,
        layers=tuple(layers),
        notes=tuple(notes),
        batch_statistics=tuple(batch_statistics),
    )


def bn_layer(entry: BatchNormModule, trainable: bool | None = None) -> BNLayer:
    """One module with running statistics (or FrozenBatchNorm buffers) as a ``BNLayer``."""
    module = entry.module
    arrays = {
        "moving_mean": _array(tensor(module, "running_mean")),
        "moving_variance": _array(tensor(module, "running_var")),
    }
    weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
    if isinstance(weight, torch.Tensor):
        arrays["gamma"] = _array(weight)
    if isinstance(bias, torch.Tensor):
        arrays["beta"] = _array(bias)
    tracked = getattr(module, "num_batches_tracked", None)
    momentum = getattr(module, "momentum", None)
    epsilon = getattr(module, "eps", None)
    prefix = f"{entry.path}." if entry.path else ""
    class_name = type(module).__name__
    return BNLayer.from_arrays(
        arrays,
        path=entry.path,
        name=entry.path.rsplit(".", 1)[-1],
        class_name=class_name,
        axis=(1,),
        momentum=float(momentum) if isinstance(momentum, (int, float)) else None,
        epsilon=float(epsilon) if isinstance(epsilon, (int, float)) else None,
        center="beta" in arrays,
        scale="gamma" in arrays,
        trainable=trainable,
        synchronized=class_name in SYNCHRONIZED_CLASSES,
        initial=InitialValues(),
        source=entry.path,
        locations={
            "moving_mean": f"{prefix}running_mean",
            "moving_variance": f"{prefix}running_var",
        },
        framework="pytorch",
        num_batches_tracked=int(tracked.item()) if isinstance(tracked, torch.Tensor) else None,
        variance_estimator="unbiased",
    )


def tensor(module: nn.Module, name: str) -> torch.Tensor:
    """A module's buffer or parameter that must be there (``running_mean``, ...)."""
    value = getattr(module, name)
    assert isinstance(value, torch.Tensor), f"{type(module).__name__}.{name} is no tensor"
    return value


def frozen(entry: BatchNormModule) -> bool:
    """Whether a module is frozen the PyTorch ways: a FrozenBatchNorm-style module, or a
    BatchNorm whose ``weight`` and ``bias`` do not require gradients."""
    if entry.kind == FROZEN:
        return True
    parameters = list(entry.module.parameters(recurse=False))
    return bool(parameters) and not any(parameter.requires_grad for parameter in parameters)


def _array(tensor: torch.Tensor) -> np.ndarray:
    value = tensor.detach()
    if value.dtype not in (torch.float16, torch.float32, torch.float64):
        value = value.float()  # bfloat16 has no NumPy type
    return np.array(value.cpu().numpy(), copy=True).ravel()


def _listed(paths: list[str]) -> str:
    shown = ", ".join(paths[:3])
    return shown if len(paths) <= 3 else f"{shown} and {len(paths) - 3} more"
