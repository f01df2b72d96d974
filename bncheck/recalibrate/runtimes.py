"""Recalibrating the models a runtime other than Keras runs, through the runner protocol
(``bncheck.probe.runtime``):

- an ONNX model runs itself with onnxruntime (its graph checked for ops not known to be pure, as
  the probe checks it);
- a SavedModel runs its serving signature with TensorFlow, its BatchNorm ops rewritten
  (``bncheck.probe.runtimes.savedmodel_runner``), after the same check of its ops; OUT is a
  new folder;
- a TorchScript archive runs itself with PyTorch, only with ``--unsafe``;
- a PyTorch state dict or pickled module (``.pt``, ``.pth``) or a safetensors file holds no
  architecture bncheck runs: ``--runnable FILE`` names a runnable twin, the same network's ONNX
  or TorchScript export, whose layers are matched with MODEL's by name and shape.

The estimate and its verification are the Keras path's own (``command.estimate`` sums and
``command.verify``), over the runner's batch-statistics and inference passes; the statistics are
PyTorch's convention (the variance unbiased), and the writers (``writers.write_statistics``)
change only their bytes in a copy of MODEL.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from bncheck import formats
from bncheck.errors import ModelReadError, UsageError
from bncheck.model import ModelDescription
from bncheck.probe import data as probe_data
from bncheck.probe import safety
from bncheck.probe.runtime import LayerInfo, Runner
from bncheck.readers import detect
from bncheck.recalibrate.options import RecalibrateOptions
from bncheck.recalibrate.results import FROZEN, NOT_LOADED, UNTOUCHED

if TYPE_CHECKING:
    from bncheck.progress import Progress
    from bncheck.recalibrate.command import Plan

#: MODEL formats written through a runner, and whether MODEL runs itself.
RUNS_ITSELF = {
    "onnx": True,
    "torchscript": True,
    "savedmodel": True,
    "pytorch": False,
    "safetensors": False,
}
#: The formats a runnable twin may be.
RUNNABLE = ("onnx", "torchscript")


def runnable_path(options: RecalibrateOptions, description: ModelDescription) -> str:
    """The file that runs: MODEL itself, or its ``--runnable`` twin."""
    if options.runnable is None:
        if not RUNS_ITSELF[description.format]:
            raise UsageError(
                f"{options.model}: a {description.format} file holds no architecture to run: "
                "give --runnable FILE, the same network exported to ONNX or TorchScript, to "
                "estimate its statistics with"
            )
        return options.model
    try:
        found = detect.sniff(options.runnable)
    except ModelReadError as exc:
        raise ModelReadError(f"--runnable {options.runnable}: {exc}") from None
    if found.name not in RUNNABLE:
        raise UsageError(
            f"--runnable {options.runnable}: give the network's ONNX or TorchScript export, not "
            f"{found.called}"
        )
    return options.runnable


def extra(path: str) -> str:
    """The extra the runtime of ``path`` needs."""
    runtime = detect.sniff(path).runtime
    assert runtime is not None  # runnable_path admits only runnable formats
    return formats.RUNTIMES[runtime].extra


def open_runner(
    path: str, options: RecalibrateOptions
) -> tuple[Runner, list[probe_data.InputSpec]]:
    """Load ``path`` with its runtime, after the checks the probe makes."""
    found = detect.sniff(path)
    if found.name == "onnx":
        from bncheck.probe.runtimes import onnx_model
        from bncheck.readers.onnx import onnx_graph

        model = onnx_graph.load(path)
        content = onnx_model.scan_graph(model)
        if content and not options.unsafe:
            raise UsageError(f"{path}: {safety.refusal(content)}")
        return onnx_model.open_runner(path, model)
    if found.name == "savedmodel":
        return _open_savedmodel(path, options)
    from bncheck.probe.runtimes import torchscript_model

    if not options.unsafe:
        raise UsageError(f"{path}: {torchscript_model.COMPILED_CODE}")
    from bncheck.readers import read_model

    if read_model(path).pickled_calls:
        # Not even with --unsafe, as the probe (BN019): torch.jit.save writes no such file.
        raise ModelReadError(
            f"{path}: its pickle asks for calls (BN019), so bncheck does not hand it to PyTorch"
        )
    runner = torchscript_model.open_runner(path)
    fixed = [layer.path for layer in runner.layers if layer.momentum == 0.0]
    if fixed:
        raise UsageError(f"{path}: {torchscript_model.momentum_zero(fixed)}")
    return runner, torchscript_model.input_specs(options.data, {})


def _open_savedmodel(
    path: str, options: RecalibrateOptions
) -> tuple[Runner, list[probe_data.InputSpec]]:
    """A SavedModel's serving signature, its ops checked before TensorFlow loads it."""
    from bncheck.probe.runtimes import savedmodel, savedmodel_runner
    from bncheck.probe.runtimes.backend import import_keras
    from bncheck.readers import read_model

    content = savedmodel.scan_graph(path)
    if content and not options.unsafe:
        raise UsageError(f"{path}: {safety.refusal(content)}")
    import_keras()
    runner, specs = savedmodel_runner.open_runner(path, read_model(path))
    return runner, specs


def fitted(plan: Plan, runner: Runner, progress: Progress) -> Plan:
    """``plan`` for a runner whose model takes one batch size only (an ONNX export without a
    dynamic batch dimension): whole batches of that size, as the probe runs it, and said."""
    size = runner.fixed_batch
    if size is None:
        return plan
    if size != plan.batch_size:
        progress.step(
            f"the model's inputs have a fixed batch dimension of {size}: running whole batches "
            f"of {size} instead of --batch-size {plan.batch_size}"
        )
    return replace(plan, batch_size=size, whole=True)


def choose(
    description: ModelDescription,
    layers: Iterable[LayerInfo],
    include_frozen: bool,
    include_untouched: bool,
) -> tuple[list[LayerInfo], dict[str, str]]:
    """The runner's layers to re-estimate, matched with MODEL's by name and channel count, and
    why each of MODEL's other layers keeps its statistics."""
    from bncheck import verdict

    in_file = {layer.path: layer for layer in description.layers}
    targets: list[LayerInfo] = []
    kept: dict[str, str] = {}
    for layer in layers:
        stored = in_file.get(layer.path)
        if stored is None or np.size(stored.moving_mean) != np.size(layer.moving_mean):
            continue
        _same_statistics(stored.moving_mean, layer.moving_mean, layer.path)
        _same_statistics(stored.moving_variance, layer.moving_variance, layer.path)
        for ours, theirs in ((stored.gamma, layer.gamma), (stored.beta, layer.beta)):
            # Statistics that never moved are the same in every network: the weights are not.
            if ours is not None and theirs is not None:
                _same_statistics(ours, theirs, layer.path, "weights")
        if not layer.trainable and not include_frozen:
            kept[layer.path] = FROZEN
        elif verdict.learned_without_batch_statistics(stored) and not include_untouched:
            kept[layer.path] = UNTOUCHED
        else:
            targets.append(layer)
    if description.layers and not targets and not kept:
        raise UsageError(
            "no BatchNorm layer of the runnable file matches MODEL's by name and channels "
            f"(MODEL has {', '.join(list(in_file)[:3])}...): give the export of the same "
            "network, its BatchNorm nodes kept (do_constant_folding=False)"
        )
    chosen = {layer.path for layer in targets}
    for path in in_file:
        if path not in chosen:
            kept.setdefault(path, NOT_LOADED)
    return targets, kept


def _same_statistics(in_model: Any, in_runner: Any, path: str, what: str = "statistics") -> None:
    """A runnable twin exported from MODEL holds MODEL's statistics: otherwise it is another
    network (or another checkpoint of it), whose estimates would be written into MODEL and its
    accuracy reported as MODEL's."""
    ours = np.asarray(in_model, dtype=np.float64).ravel()
    theirs = np.asarray(in_runner, dtype=np.float64).ravel()
    if not np.allclose(ours, theirs, rtol=1e-5, atol=1e-7, equal_nan=True):
        raise UsageError(
            f"the runnable file's {path} holds other {what} than MODEL's: it is not an "
            "export of MODEL (give the ONNX or TorchScript file exported from these very "
            "weights)"
        )


class Sweeper:
    """A runner run batch by batch, as ``Passes.sweep`` runs a Keras model: what the Keras
    path's estimate and verification read."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def sweep(
        self, batches: Iterable[probe_data.Batch], *modes: str, outputs: bool = True
    ) -> Iterator[Any]:
        from bncheck.probe.runtimes.passes import Step

        for batch in batches:
            yield Step(batch.size, batch.labels, self.runner.run(batch.inputs, *modes))
