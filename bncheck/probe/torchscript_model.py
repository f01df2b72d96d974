"""Running TorchScript archives with PyTorch for the probe (``--unsafe``, ``bncheck[torch]``).

A TorchScript archive holds compiled code, which ``torch.jit.load`` runs, so the probe loads one
only with ``--unsafe``, and never one whose pickle asks for calls beyond rebuilding tensors
(BN019): that is no archive ``torch.jit.save`` writes.

Inference mode is ``model.eval()``, as PyTorch serving code runs a model; training mode switches
the BatchNorm modules alone to ``train()``, so the two passes differ by normalisation only. The
running statistics that training mode updates are put back afterwards. TorchScript modules take
no Python hooks once loaded, so the layers inside are not measured: BN013 and BN016 judge the
outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError, UsageError
from bncheck.probe.batches import data_notes, first_batch
from bncheck.probe.data import LABELS_KEY, InputSpec, load_arrays
from bncheck.probe.measure import Outputs, compare_outputs
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import INFERENCE, TRAINING, CodeReference, ProbeResult
from bncheck.readers import read_model

LOADER = "torch.jit"
INSTALL_HINT = "probing TorchScript archives needs PyTorch: pip install 'bncheck[torch]'"
CODE = CodeReference("torchscript", "code/", "compiled code")
#: TorchScript keeps each module's original class name.
BATCHNORM_CLASSES = frozenset({"BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"})
NOTES = (
    "TorchScript modules take no hooks once loaded: per-layer measurements (BN014, where BN013 "
    "starts) are not made",
    "inference mode is model.eval(); training mode switches the BatchNorm modules alone",
)


def probe(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    """Run the archive in both modes on one batch (``--unsafe`` only). TorchScript modules
    take no hooks, so the layers, and ``untouched``, play no part."""
    description = read_model(path)
    if description.pickled_calls:
        skipped = "its pickle asks for calls (BN019), so bncheck does not hand it to PyTorch"
        return ProbeResult(path, None, (CODE,), options.unsafe, skipped=skipped)
    if not options.unsafe:
        skipped = "the archive holds compiled code; pass --unsafe to run it if you trust the file"
        return ProbeResult(path, None, (CODE,), options.unsafe, skipped=skipped)
    torch = _import_torch()
    step("loading with torch.jit")
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # a corrupt or hostile archive may fail anywhere in PyTorch
        raise ModelReadError(f"torch.jit.load failed ({_one_line(exc)})") from None
    specs = _input_specs(options)
    first, described = first_batch(specs, options)
    batch = first.inputs
    step(f"running {described.samples} samples in inference and training mode")
    batchnorms = [
        child for _, child in module.named_modules() if child.original_name in BATCHNORM_CLASSES
    ]
    saved = {name: value.clone() for name, value in module.state_dict().items()}
    half = [array[: len(array) // 2] for array in batch] if described.samples >= 2 else None
    try:
        with torch.no_grad():
            module.eval()
            inferred = _run(torch, module, batch)
            alone = _run(torch, module, half) if half is not None else None
            for batchnorm in batchnorms:
                batchnorm.train()
            trained = _run(torch, module, batch) if batchnorms else None
    finally:
        module.load_state_dict(saved)
        module.eval()
    notes = [*data_notes(described.real), *NOTES]
    if not batchnorms:
        notes.append("no BatchNorm modules: there is no training mode to compare with")
    return ProbeResult(
        path=path,
        loader=LOADER,
        content=(CODE,),
        unsafe=True,
        data=described,
        modes=(INFERENCE, TRAINING) if trained is not None else (INFERENCE,),
        outputs=compare_outputs(inferred, trained, alone),
        notes=tuple(notes),
    )


def _import_torch() -> Any:
    try:
        import torch
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return torch


def _input_specs(options: ProbeOptions) -> list[InputSpec]:
    """TorchScript declares no input shapes: one input, shaped by the data or --input-shape."""
    if options.data is not None:
        arrays = load_arrays(options.data, "--data")
        arrays.pop(LABELS_KEY, None)
        if len(arrays) == 1:
            return [InputSpec("input", (None, *next(iter(arrays.values())).shape[1:]), "float32")]
    elif set(options.input_shapes) == {None}:
        return [InputSpec("input", (None, *options.input_shapes[None]), "float32")]
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
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
