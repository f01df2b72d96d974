"""``bncheck.torch.recalibrate``: exact population statistics for a live PyTorch module,
verified before they are kept, on one process or across the ranks of ``torch.distributed``.

1. Choose the modules as ``bncheck recalibrate`` chooses layers (``recalibrate.command.choose``):
   frozen ones (``requires_grad=False`` on ``weight`` and ``bias``) and those whose statistics
   never moved while ``weight`` and ``bias`` trained keep theirs unless asked; FrozenBatchNorm
   modules always keep theirs.
2. Estimate: one pass over the loader with the module in ``eval()`` and the chosen BatchNorm
   modules in ``train()``, as they ran in training. A forward pre-hook adds each chosen module's
   input moments, pooled over every axis but channel axis 1, to float64 sums
   (``bncheck.torch.moments``); under ``torch.distributed`` one ``all_reduce`` combines the
   ranks' sums. The estimate is the sample-weighted average of the per-batch means and unbiased
   variances, the CLI's estimate. Every buffer, mode and forward is put back afterwards.
3. Verify: the module in ``eval()`` with its stored statistics and with the new ones, batch by
   batch, on ``validate`` (else the loader); the figures are summed over all ranks.
4. Keep the result only if the CLI's rule (``recalibrate.command``) lets it be written; then
   ``in_place`` copies it into the module and ``save`` writes the state dict (rank 0 only).
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bncheck.errors import UsageError
from bncheck.model import BNLayer, ModelDescription
from bncheck.probe import uncertainty
from bncheck.probe.measure import MetricSums, OutputSums
from bncheck.probe.results import Metric, Population
from bncheck.recalibrate import command
from bncheck.recalibrate.results import (
    DID_NOT_RUN,
    LayerChange,
    Recalibration,
    Verification,
)
from bncheck.records import record
from bncheck.torch.modules import (
    FROZEN,
    TRACKING,
    BatchNormModule,
    batchnorm_modules,
    tensor,
    unwrap,
)
from bncheck.torch.modules import bn_layer as describe_layer
from bncheck.torch.modules import frozen as is_frozen
from bncheck.torch.moments import LayerSums, all_reduce, as_numpy, reduce_floats

#: Why a FrozenBatchNorm-style module keeps its buffers, whatever ``include_frozen`` says.
FROZEN_MODULE = "kept (FrozenBatchNorm)"
#: The suffixes ``save`` writes, by writer.
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

#: ``metric(outputs, labels)``: the metric of one batch, averaged over its samples; higher is
#: better.
MetricFunction = Callable[[torch.Tensor, torch.Tensor], float]


@record
class Score(Metric):
    """A metric given by the user: higher is better, shown as a plain number."""

    @property
    def higher_is_better(self) -> bool:
        return True

    def format(self, value: float) -> str:
        return f"{value:.4g}"


def recalibrate(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    validate: Iterable[Any] | None = None,
    metric: MetricFunction | None = None,
    in_place: bool = False,
    include_frozen: bool = False,
    include_untouched: bool = False,
    samples: int | None = None,
    save: str | os.PathLike[str] | None = None,
    force: bool = False,
    config: str | os.PathLike[str] | None = None,
) -> Recalibration:
    """Re-estimate the running statistics of ``module``'s BatchNorm modules from ``loader``,
    measure the module before and after, and keep the result only if it is not worse, like
    ``bncheck recalibrate``. See ``docs/pytorch.md``.

    Args:
        module: a ``torch.nn.Module``, or one wrapped by ``DataParallel``,
            ``DistributedDataParallel`` or ``torch.compile`` (the module inside runs, eagerly,
            on its own device).
        loader: batches to estimate from: tensors ``x``, or ``(x, y, ...)`` tuples; ``x`` may
            be a tuple of positional inputs or a dict of keyword inputs. Under
            ``torch.distributed``, each rank's own share (a ``DistributedSampler``).
        validate: labelled held-out batches ``(x, y)``: the metric before and after decides.
            Without it, ``loader`` is measured: by the metric where it has labels, otherwise
            by how many top-1 predictions change.
        metric: ``metric(outputs, labels) -> float``, a batch's mean, higher is better (pass
            the negative of a loss). Default: accuracy for class scores, else mean squared
            error.
        in_place: copy the new statistics into ``module`` when they are kept. Without it,
            ``module`` is left exactly as it was.
        include_frozen: also re-estimate modules whose ``weight`` and ``bias`` do not require
            gradients.
        include_untouched: also re-estimate modules whose statistics never moved while their
            ``weight`` and ``bias`` trained.
        samples: use at most this many samples of ``loader`` (on each rank).
        save: write ``module``'s state dict with the new statistics here (``.pt``, ``.pth``,
            ``.bin`` or ``.safetensors``) when they are kept; only rank 0 writes.
        force: keep the result even when it measures worse or cannot be verified.
        config: the ``bncheck.toml`` or ``pyproject.toml`` whose BN015 limits judge a result
            without labels; by default the one found from the working directory upward.

    Returns:
        The ``Recalibration`` the CLI renders: per-module changes, the verification, the
        refusal (``None`` when kept), the new statistics by module path, and ``written_to``.

    Raises:
        UsageError: a loader whose batches are not tensors, ``validate`` without labels, a
            ``save`` path that cannot be written, a module without BatchNorm to run.
    """
    from bncheck.api import resolve

    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, not {type(module).__name__}")
    target = _save_path(save)
    settings = resolve(None, None, config)
    root = unwrap(module)
    device = _device(root)
    entries = [e for e in batchnorm_modules(root) if e.kind in (TRACKING, FROZEN)]
    description, kept = _description(entries)
    tracking = [(e.path, e.module) for e in entries if e.kind == TRACKING]
    targets, chosen_kept = command.choose(description, tracking, include_frozen, include_untouched)
    kept.update(chosen_kept)
    name = type(root).__name__
    data_name = f"the loader ({type(loader).__name__})"
    if not targets:
        output = None if target is None else os.fspath(target)
        return command._nothing_to_do(name, output, data_name, description, kept, settings)
    chosen = dict(targets)
    distributed = _distributed()
    reduce_device = device if distributed and _backend() == "nccl" else torch.device("cpu")

    sums, batches, seen = _estimate(root, chosen, loader, samples, device)
    if distributed:
        all_reduce(sums, {path: _channels(mod) for path, mod in chosen.items()}, reduce_device)
        batches, seen = (int(v) for v in reduce_floats([batches, seen], reduce_device))
    if batches == 0:
        raise UsageError(f"{data_name} holds no samples")
    new = {
        path: layer.moment_sums().population()
        for path, layer in sums.items()
        if layer.counts is not None and layer.counts[1].item() > 0
    }
    kept.update(dict.fromkeys(set(chosen) - set(new), DID_NOT_RUN))
    checked = validate if validate is not None else loader
    check = _verify(
        root, {p: chosen[p] for p in new}, new, checked, validate is not None, metric, device
    )
    if distributed:
        check = _combined(check, reduce_device)
    changes = tuple(
        _change(layer, new, kept, chosen.get(layer.path)) for layer in description.layers
    )
    result = Recalibration(
        model=name,
        output=None if target is None else os.fspath(target),
        data=data_name,
        batches=batches,
        samples=seen,
        layers=changes,
        verification=check.verification,
        refusal=command._refusal(check.verification, settings),
        fail_on=settings.fail_on,
        statistics=new,
    )
    if result.refusal is not None and not force:
        return result
    calls = {path: sums[path].moment_sums().calls for path in new}
    if target is not None:
        if distributed and _rank() != 0:
            result = replace(result, writer="rank 0")
        else:
            _write(root, {p: chosen[p] for p in new}, new, calls, target, in_place)
            result = result.written(os.fspath(target))
    if in_place:
        _assign(root, {p: chosen[p] for p in new}, new, calls)
        if result.written_to is None:
            result = result.written(name)
    return result


def _description(entries: list[BatchNormModule]) -> tuple[ModelDescription, dict[str, str]]:
    """The modules as ``command.choose`` reads layers (``trainable`` from ``requires_grad``),
    and FrozenBatchNorm modules as kept."""
    layers: list[BNLayer] = []
    kept: dict[str, str] = {}
    for entry in entries:
        layers.append(describe_layer(entry, trainable=not is_frozen(entry)))
        if entry.kind == FROZEN:
            kept[entry.path] = FROZEN_MODULE
    return ModelDescription(path="module", format="live", layers=tuple(layers)), kept


def _estimate(
    root: nn.Module,
    chosen: Mapping[str, nn.Module],
    loader: Iterable[Any],
    samples: int | None,
    device: torch.device,
) -> tuple[dict[str, LayerSums], int, int]:
    """Sums of each chosen module's input moments over ``loader``: (sums, batches, samples)."""
    sums: dict[str, LayerSums] = {}
    batches = seen = 0
    with _estimation_mode(root, chosen, sums), torch.no_grad():
        for batch in loader:
            inputs, _ = _split(batch)
            size = _batch_size(inputs)
            if samples is not None:
                if seen >= samples:
                    break
                if seen + size > samples:
                    inputs, size = _head(inputs, samples - seen), samples - seen
            _call(root, inputs, device)
            batches += 1
            seen += size
    return sums, batches, seen


@contextlib.contextmanager
def _estimation_mode(
    root: nn.Module, chosen: Mapping[str, nn.Module], sums: dict[str, LayerSums]
) -> Iterator[None]:
    """The module in ``eval()`` and the chosen BatchNorm modules in ``train()``, with hooks
    summing their inputs' moments; everything put back afterwards: modes, buffers, forwards."""
    modes = [(child, child.training) for child in root.modules()]
    buffers = [
        (buffer, buffer.detach().clone())
        for child in chosen.values()
        for buffer in child.buffers(recurse=False)
    ]
    handles = [
        child.register_forward_pre_hook(functools.partial(_record, sums, path))
        for path, child in chosen.items()
    ]
    swapped = []
    for child in chosen.values():
        if isinstance(child, nn.SyncBatchNorm):
            # SyncBatchNorm would combine each batch with the other ranks' in its own collective
            # (which needs the same number of batches on every rank); the estimate wants each
            # rank's batch moments, combined once at the end.
            plain = types.MethodType(nn.modules.batchnorm._BatchNorm.forward, child)
            child.forward = plain  # type: ignore[method-assign]
            swapped.append(child)
    try:
        root.eval()
        for child in chosen.values():
            child.train()
        yield
    finally:
        for handle in handles:
            handle.remove()
        for child in swapped:
            del child.forward
        with torch.no_grad():
            for buffer, value in buffers:
                buffer.copy_(value)
        for child, training in modes:
            child.training = training


def _record(sums: dict[str, LayerSums], path: str, _: nn.Module, args: tuple[Any, ...]) -> None:
    if args and isinstance(args[0], torch.Tensor):
        sums.setdefault(path, LayerSums()).add(args[0])


@record
class _Check:
    """A verification with the totals it came from, to combine across ranks."""

    verification: Verification
    totals: OutputSums
    before: float
    after: float
    labelled: int
    metric_name: str | None
    custom: bool
    paired: tuple[np.ndarray, np.ndarray]
    """The metric's paired values with the stored and with the new statistics, for the
    interval of the change: one per sample (accuracy, mean squared error), or one per batch (a
    ``metric`` function gives a batch's mean)."""


def _verify(
    root: nn.Module,
    chosen: Mapping[str, nn.Module],
    new: Mapping[str, Population],
    batches: Iterable[Any],
    held_out: bool,
    metric: MetricFunction | None,
    device: torch.device,
) -> _Check:
    """The module in ``eval()`` with its stored statistics and with the new ones, batch by
    batch; restored afterwards."""
    totals = OutputSums()
    before, after = MetricSums(), MetricSums()
    custom = [0.0, 0.0, 0]
    custom_values: tuple[list[float], list[float]] = ([], [])
    samples = 0
    modes = [(child, child.training) for child in root.modules()]
    stored = {
        path: (tensor(child, "running_mean").clone(), tensor(child, "running_var").clone())
        for path, child in chosen.items()
    }
    estimates = {
        path: (
            torch.as_tensor(population.mean).to(stored[path][0]),
            torch.as_tensor(population.variance).to(stored[path][1]),
        )
        for path, population in new.items()
    }
    try:
        root.eval()
        with torch.no_grad():
            for batch in batches:
                inputs, labels = _split(batch)
                if held_out and labels is None:
                    raise UsageError("validate has no labels: give (x, y) batches")
                first = _output(_call(root, inputs, device))
                _load(chosen, estimates)
                second = _output(_call(root, inputs, device))
                _load(chosen, stored)
                ahead, behind = as_numpy(first), as_numpy(second)
                totals.add_inference(ahead)
                totals.add_estimated(ahead, behind)
                if labels is not None:
                    if metric is not None:
                        target = labels.to(first.device)
                        size = len(labels)
                        values = float(metric(first, target)), float(metric(second, target))
                        custom[0] += values[0] * size
                        custom[1] += values[1] * size
                        custom[2] += size
                        custom_values[0].append(values[0])
                        custom_values[1].append(values[1])
                    else:
                        truth = as_numpy(labels)
                        before.add(ahead, truth)
                        after.add(behind, truth)
                samples += len(ahead)
    finally:
        _load(chosen, stored)
        for child, training in modes:
            child.training = training
    if metric is not None:
        name: str | None = getattr(metric, "__name__", "metric")
        labelled = int(custom[2])
        first_total, second_total = custom[0], custom[1]
        paired = (np.asarray(custom_values[0]), np.asarray(custom_values[1]))
    else:
        name, labelled = before.name, before.samples
        first_total, second_total = before.total, after.total
        paired = (before.values(), after.values())
    return _checked(
        totals,
        first_total,
        second_total,
        labelled,
        name,
        metric is not None,
        held_out,
        samples,
        paired,
    )


def _checked(
    totals: OutputSums,
    before: float,
    after: float,
    labelled: int,
    name: str | None,
    custom: bool,
    held_out: bool,
    samples: int,
    paired: tuple[np.ndarray, np.ndarray],
) -> _Check:
    measured = None
    if name is not None and labelled > 0:
        kind = Score if custom else Metric
        # The interval the CLI's verification computes (``command.verify``), so that the one
        # rule (``command._refusal``) judges the same evidence.
        change = uncertainty.paired_change(*paired)
        measured = kind(name, before / labelled, after / labelled, None, change)
    figures = totals.measurement("output", trained=False, estimated=True, metric=measured)
    verification = Verification(
        on="validate" if held_out else "the loader",
        held_out=held_out,
        samples=samples,
        metric=measured,
        changed_predictions=(
            None
            if figures.reestimated_top1_agreement is None
            else 1.0 - figures.reestimated_top1_agreement
        ),
        relative_change=figures.reestimated_relative_error or 0.0,
    )
    return _Check(verification, totals, before, after, labelled, name, custom, paired)


def _combined(check: _Check, device: torch.device) -> _Check:
    """The verification over every rank's batches: each total summed across ranks."""
    totals = check.totals
    figures = reduce_floats(
        [
            totals.estimated_gap,
            totals.stored_norm,
            totals.estimated_same,
            totals.classified,
            0.0 if totals.classifier else 1.0,
            check.before,
            check.after,
            check.labelled,
            check.verification.samples,
        ],
        device,
    )
    gap, norm, same, classified, not_classifier, before, after, labelled, samples = figures
    combined = OutputSums(
        batches=1,
        estimated_gap=gap,
        stored_norm=norm,
        estimated_same=int(same),
        classified=int(classified),
        classifier=not_classifier == 0.0,
    )
    return _checked(
        combined,
        before,
        after,
        int(labelled),
        check.metric_name,
        check.custom,
        check.verification.held_out,
        int(samples),
        _gathered(check.paired),
    )


def _gathered(paired: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's paired values, rank by rank, on every rank."""
    import torch.distributed as dist

    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, paired)
    return (
        np.concatenate([part[0] for part in parts]),
        np.concatenate([part[1] for part in parts]),
    )


def _load(
    chosen: Mapping[str, nn.Module], values: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> None:
    for path, (mean, variance) in values.items():
        tensor(chosen[path], "running_mean").copy_(mean)
        tensor(chosen[path], "running_var").copy_(variance)


def _assign(
    root: nn.Module,
    chosen: Mapping[str, nn.Module],
    new: Mapping[str, Population],
    calls: Mapping[str, int],
) -> None:
    """The new statistics into the modules; ``num_batches_tracked`` counts the batches they
    average, as ``torch.optim.swa_utils.update_bn`` leaves it."""
    with torch.no_grad():
        for path, population in new.items():
            child = chosen[path]
            tensor(child, "running_mean").copy_(torch.as_tensor(population.mean))
            tensor(child, "running_var").copy_(torch.as_tensor(population.variance))
            tracked = getattr(child, "num_batches_tracked", None)
            if isinstance(tracked, torch.Tensor):
                tracked.fill_(calls[path])


def _write(
    root: nn.Module,
    chosen: Mapping[str, nn.Module],
    new: Mapping[str, Population],
    calls: Mapping[str, int],
    target: Path,
    in_place: bool,
) -> None:
    """``root``'s state dict with the new statistics, written to a temporary file beside
    ``target`` and renamed over it. Every other tensor is the module's own, unchanged."""
    state = dict(root.state_dict())
    prefixes = {path: f"{path}." if path else "" for path in new}
    for path, population in new.items():
        prefix = prefixes[path]
        mean, variance = state[f"{prefix}running_mean"], state[f"{prefix}running_var"]
        state[f"{prefix}running_mean"] = torch.as_tensor(population.mean).to(mean)
        state[f"{prefix}running_var"] = torch.as_tensor(population.variance).to(variance)
        tracked = state.get(f"{prefix}num_batches_tracked")
        if isinstance(tracked, torch.Tensor):
            state[f"{prefix}num_batches_tracked"] = torch.full_like(tracked, calls[path])
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=target.suffix, dir=target.parent
    )
    os.close(handle)
    try:
        if target.suffix.lower() == SAFETENSORS_SUFFIX:
            from safetensors.torch import save_file

            try:
                save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, temporary)
            except (RuntimeError, ValueError) as exc:
                raise UsageError(f"cannot write {target}: {_one_line(exc)}") from None
        else:
            torch.save(state, temporary)
        os.replace(temporary, target)
    except OSError as exc:
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _save_path(save: str | os.PathLike[str] | None) -> Path | None:
    """Where ``save`` asks to write, checked before any work is done."""
    if save is None:
        return None
    target = Path(os.fspath(save))
    suffix = target.suffix.lower()
    if suffix not in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
        raise UsageError(
            f"save={os.fspath(save)!r}: name the file .pt, .pth, .bin (torch.save) or .safetensors"
        )
    if suffix == SAFETENSORS_SUFFIX:
        try:
            import safetensors.torch  # noqa: F401
        except ImportError:
            raise UsageError(
                f"save={os.fspath(save)!r} needs safetensors: pip install safetensors"
            ) from None
    if target.is_dir():
        raise UsageError(f"save={os.fspath(save)!r} is a directory: give the file to write")
    if not target.absolute().parent.is_dir():
        raise UsageError(f"cannot write {target}: no such directory {target.absolute().parent}")
    return target.absolute()


def _change(
    layer: BNLayer, new: Mapping[str, Population], kept: Mapping[str, str], module: Any
) -> LayerChange:
    if layer.path not in new:
        return LayerChange(layer.path, kept.get(layer.path, command.NOT_LOADED))
    population = new[layer.path]
    return LayerChange.measured(
        layer.path,
        (layer.moving_mean, layer.moving_variance),
        (population.mean, population.variance),
        float(getattr(module, "eps", 1e-5)),
    )


def _split(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(inputs, labels or ``None``) of one batch."""
    if isinstance(batch, (tuple, list)) and batch:
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, torch.Tensor):
            raise UsageError(f"a batch's labels are {type(labels).__name__}, not a tensor")
        return batch[0], labels
    return batch, None


def _call(root: nn.Module, inputs: Any, device: torch.device) -> Any:
    _tensors(inputs)
    if isinstance(inputs, torch.Tensor):
        return root(inputs.to(device))
    if isinstance(inputs, Mapping):
        return root(**{key: value.to(device) for key, value in inputs.items()})
    return root(*(value.to(device) for value in inputs))


def _tensors(inputs: Any) -> list[torch.Tensor]:
    """The input tensors of one batch; a usage error for anything else."""
    if isinstance(inputs, torch.Tensor):
        return [inputs]
    values = list(inputs.values()) if isinstance(inputs, Mapping) else inputs
    if (
        isinstance(values, (tuple, list))
        and values
        and all(isinstance(value, torch.Tensor) for value in values)
    ):
        return list(values)
    raise UsageError(
        f"a batch's inputs are {type(inputs).__name__}: give tensors, (x, y) tuples, or x as a "
        "tuple or dict of tensors"
    )


def _batch_size(inputs: Any) -> int:
    return int(_tensors(inputs)[0].shape[0])


def _head(inputs: Any, count: int) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs[:count]
    if isinstance(inputs, Mapping):
        return {key: value[:count] for key, value in inputs.items()}
    return type(inputs)(value[:count] for value in inputs)


def _output(outputs: Any) -> torch.Tensor:
    """The output measured: the module's, or the first of several."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(outputs, Mapping):
        outputs = list(outputs.values())
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise UsageError(f"the module returned {type(outputs).__name__}, not a tensor to measure")


def _channels(module: nn.Module) -> int:
    return int(tensor(module, "running_mean").numel())


def _device(root: nn.Module) -> torch.device:
    for value in (*root.parameters(), *root.buffers()):
        return value.device
    return torch.device("cpu")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _backend() -> str:
    import torch.distributed as dist

    return str(dist.get_backend())


def _rank() -> int:
    import torch.distributed as dist

    return int(dist.get_rank())


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
