"""Running TorchScript archives with PyTorch for the probe (``--unsafe``, ``bncheck[torch]``).

A TorchScript archive holds compiled code, which ``torch.jit.load`` runs, so the probe loads one
only with ``--unsafe``, and never one whose pickle asks for calls beyond rebuilding tensors
(BN019): that is no archive ``torch.jit.save`` writes.

Inference mode is ``model.eval()``, as PyTorch serving code runs a model; training mode switches
the BatchNorm modules alone to ``train()``, so the two passes differ by normalisation only, and
every layer's batch moments are read back from the running statistics that update
(``TorchScriptRunner``), which are put back afterwards. The measurement is the one every runtime
shares (``measure.measure``): all the data, population statistics with their noise (BN014), the
cross-fitted effect of re-estimating them (BN015). TorchScript modules take no Python hooks once
loaded, so the layers' output figures are not measured: BN013 judges the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError, UsageError
from bncheck.probe import measure
from bncheck.probe.data import LABELS_KEY, InputSpec, load_arrays
from bncheck.probe.data.batches import BatchPlan
from bncheck.probe.measure import Outputs
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import CodeReference, ProbeResult
from bncheck.probe.runtime import (
    ESTIMATED,
    TRAINING,
    LayerInfo,
    Moments,
    PassResult,
    Statistics,
)
from bncheck.readers import read_model

LOADER = "torch.jit"
INSTALL_HINT = "probing TorchScript archives needs PyTorch: pip install 'bncheck[torch]'"
CODE = CodeReference("torchscript", "code/", "compiled code")
#: TorchScript keeps each module's original class name.
BATCHNORM_CLASSES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})
NOTES = (
    "TorchScript modules take no hooks once loaded: each layer's batch moments are read from "
    "the running statistics training mode updates, and its output figures (where BN013 "
    "starts) are not measured",
    "inference mode is model.eval(); training mode switches the BatchNorm modules alone",
)


#: Why an archive does not run without ``--unsafe``, and what ``--unsafe`` cannot change.
COMPILED_CODE = (
    "the archive holds compiled code; pass --unsafe to run it if you trust the file and it was "
    "scripted (torch.jit.script): a traced archive (torch.jit.trace) cannot be measured"
)


def probe(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    """Measure the archive over the data (``measure.measure``; ``--unsafe`` only)."""
    description = read_model(path)
    if description.pickled_calls:
        skipped = "its pickle asks for calls (BN019), so bncheck does not hand it to PyTorch"
        return ProbeResult(path, None, (CODE,), options.unsafe, skipped=skipped)
    if not options.unsafe:
        return ProbeResult(path, None, (CODE,), options.unsafe, skipped=COMPILED_CODE)
    step("loading with torch.jit")
    runner = open_runner(path)
    source = BatchPlan(input_specs(options.data, options.input_shapes), options)
    notes = [*NOTES, *runner.notes]
    step("running the archive with PyTorch")
    found = measure.ProbeFound(path, LOADER, (CODE,), True)
    return measure.probe_result(runner, source, found, untouched, step, notes)


class TorchScriptRunner:
    """The runner protocol (``runtime.Runner``) over a loaded TorchScript module.

    - ``stored``: ``model.eval()`` with the stored buffers, as PyTorch serving code runs it;
    - ``training``: the BatchNorm modules alone switched to ``train()``. A loaded module takes
      no hooks, so each layer's batch moments are read from the update training mode makes:
      with ``running_mean`` and ``running_var`` set to zero and ``num_batches_tracked`` to 0
      before the call, they hold the batch mean and unbiased variance times the update factor
      (the momentum, or 1 for ``momentum=None``). A layer at momentum 0 keeps nothing to read,
      and a module called twice in one forward pass mixes its calls: such layers are not
      re-estimated;
    - ``estimated``: ``model.eval()`` with some layers' buffers replaced.

    The buffers are put back after every pass, and the module left in ``eval()``.
    """

    fixed_batch: int | None = None  # any batch size runs

    def __init__(self, torch: Any, module: Any) -> None:
        self.torch = torch
        self.module = module
        self.notes: list[str] = []
        self.batchnorms: list[tuple[str, Any]] = []
        self._layers: list[LayerInfo] = []
        for name, child in module.named_modules():
            if child.original_name not in BATCHNORM_CLASSES:
                continue
            mean, variance = (
                getattr(child, "running_mean", None),
                getattr(child, "running_var", None),
            )
            if mean is None or variance is None:
                continue  # track_running_stats=False: BN022 says it statically
            if not hasattr(child, "momentum") or not hasattr(child, "eps"):
                raise ModelReadError(
                    f"layer {name}: a traced archive (torch.jit.trace) cannot be measured: "
                    "tracing fixed its BatchNorm layers in the mode they were traced in and kept "
                    "no momentum or eps, which reading the batch statistics back needs; script "
                    "it (torch.jit.script) or export it to ONNX"
                )
            momentum = child.momentum
            self.batchnorms.append((name, child))
            self._layers.append(
                LayerInfo(
                    path=name,
                    trainable=momentum is None or float(momentum) > 0.0,
                    epsilon=float(child.eps),
                    momentum=None if momentum is None else float(momentum),
                    moving_mean=mean.detach().cpu().numpy().astype(np.float64),
                    moving_variance=variance.detach().cpu().numpy().astype(np.float64),
                    gamma=_array(getattr(child, "weight", None)),
                    beta=_array(getattr(child, "bias", None)),
                )
            )
        fixed = [layer.path for layer in self._layers if layer.momentum == 0.0]
        if fixed:
            self.notes.append(momentum_zero(fixed, ", so it is not re-estimated here"))
        self._saved = {name: _buffers(child) for name, child in self.batchnorms}
        self._estimates: Statistics = {}

    @property
    def layers(self) -> Sequence[LayerInfo]:
        return self._layers

    def __enter__(self) -> TorchScriptRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()
        self.module.eval()

    def use_estimates(self, statistics: Statistics) -> None:
        self._estimates = dict(statistics)

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        results = []
        with self.torch.no_grad():
            for mode in modes:
                if mode == TRAINING:
                    results.append(self._batch_statistics(inputs))
                    continue
                self._restore()
                if mode == ESTIMATED:
                    for name, child in self.batchnorms:
                        if name in self._estimates:
                            mean, variance = self._estimates[name]
                            child.running_mean.copy_(self.torch.from_numpy(np.asarray(mean)))
                            child.running_var.copy_(self.torch.from_numpy(np.asarray(variance)))
                self.module.eval()
                results.append(PassResult(_run(self.torch, self.module, inputs), [], []))
        self._restore()
        return results

    def _batch_statistics(self, inputs: Sequence[np.ndarray]) -> PassResult:
        factors = {}
        for (name, child), layer in zip(self.batchnorms, self._layers, strict=True):
            child.running_mean.zero_()
            child.running_var.zero_()
            tracked = getattr(child, "num_batches_tracked", None)
            if tracked is not None:
                tracked.zero_()
            factors[name] = 1.0 if layer.momentum is None else layer.momentum
            child.train()
        try:
            outputs = _run(self.torch, self.module, inputs)
        finally:
            self.module.eval()
        moments = [
            Moments(
                name,
                child.running_mean.detach().cpu().numpy().astype(np.float64) / factors[name],
                child.running_var.detach().cpu().numpy().astype(np.float64) / factors[name],
                len(inputs[0]),
                0,
                corrected=True,
            )
            for name, child in self.batchnorms
            if factors[name] > 0.0
        ]
        self._restore()
        return PassResult(outputs, [], moments)

    def _restore(self) -> None:
        for name, child in self.batchnorms:
            for buffer, value in zip(_live(child), self._saved[name], strict=True):
                if buffer is not None and value is not None:
                    buffer.copy_(value)


def momentum_zero(paths: Sequence[str], consequence: str = "") -> str:
    """What to say of scripted layers at momentum 0 (and ``consequence``), and how to get an
    archive that works."""
    others = len(paths) - 1
    more = f" (and {others} more layer{'s' if others > 1 else ''})" if others else ""
    return (
        f"layer {paths[0]}{more} has momentum 0, which TorchScript compiles in, and bncheck "
        f"reads each layer's batch statistics back through its momentum{consequence}: script "
        "the network again with momentum=0.1 on its BatchNorm layers (the estimate does not "
        "depend on it), or export it to ONNX, its BatchNorm nodes kept (do_constant_folding=False)"
    )


def _array(parameter: Any) -> np.ndarray | None:
    """A layer's weight or bias as an array; ``None`` for a layer without (``affine=False``)."""
    return None if parameter is None else parameter.detach().cpu().numpy().astype(np.float64)


def _live(child: Any) -> tuple[Any, ...]:
    """A BatchNorm module's statistics buffers, ``num_batches_tracked`` ``None`` if absent."""
    return (child.running_mean, child.running_var, getattr(child, "num_batches_tracked", None))


def _buffers(child: Any) -> tuple[Any, ...]:
    """A BatchNorm module's statistics buffers, cloned."""
    return tuple(None if value is None else value.detach().clone() for value in _live(child))


def open_runner(path: str) -> TorchScriptRunner:
    """The runner of the archive at ``path``: only for a user who passed ``--unsafe``."""
    torch = _import_torch()
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # a corrupt or hostile archive may fail anywhere in PyTorch
        raise ModelReadError(f"torch.jit.load failed ({_one_line(exc)})") from None
    return TorchScriptRunner(torch, module)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return torch


def input_specs(data: str | None, shapes: Mapping[str | None, tuple[int, ...]]) -> list[InputSpec]:
    """TorchScript declares no input shapes: one input, shaped by the data (``--data``, a .npy
    or .npz file) or ``--input-shape``."""
    if data is not None:
        arrays = load_arrays(data, "--data")
        arrays.pop(LABELS_KEY, None)
        if len(arrays) == 1:
            return [InputSpec("input", (None, *next(iter(arrays.values())).shape[1:]), "float32")]
    elif set(shapes) == {None}:
        return [InputSpec("input", (None, *shapes[None]), "float32")]
    raise UsageError(
        "a TorchScript archive declares no input shapes: pass --data with a .npy file or "
        "--input-shape D1,D2,... (without the batch dimension, e.g. 1,8,8)"
    )


def _run(torch: Any, module: Any, batch: Sequence[np.ndarray]) -> Outputs:
    try:
        result = module(*(torch.from_numpy(np.ascontiguousarray(array)) for array in batch))
    except Exception as exc:  # shapes the model rejects, errors raised by its code
        raise ModelReadError(f"the model failed on the batch ({_one_line(exc)})") from None
    results = result if isinstance(result, (tuple, list)) else [result]
    return [
        (f"output_{index}", value.detach().cpu().numpy())
        for index, value in enumerate(results)
        if isinstance(value, torch.Tensor)
    ]


def _one_line(exc: BaseException) -> str:
    """The error's own message: for an error raised inside TorchScript, the last line, which
    names the error after the interpreter's tracebacks of the archive's code."""
    text = str(exc)
    if "Traceback of TorchScript" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else text
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
