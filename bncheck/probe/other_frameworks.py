"""The probe for PyTorch, safetensors and ONNX files: run where the file holds an architecture,
said why not where it does not. Neither TensorFlow nor Keras is imported."""

from __future__ import annotations

from collections.abc import Mapping

from bncheck.errors import ModelReadError
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import ProbeResult
from bncheck.readers import read_model, torch_layers

KINDS = ("pytorch", "safetensors", "onnx")
NO_ARCHITECTURE = {
    "safetensors": "a safetensors file holds tensors only, no architecture to run",
    "pytorch": "a state dict holds no architecture to run",
}
PICKLED_MODEL = (
    "a pickled model needs its classes' code, which bncheck never runs: export it to ONNX or "
    "TorchScript to probe it"
)


def probe(
    path: str,
    kind: str,
    options: ProbeOptions,
    step: StepReporter,
    untouched: Mapping[str, bool],
) -> ProbeResult:
    if kind == "onnx":
        from bncheck.probe import onnx_model

        return onnx_model.probe(path, options, step, untouched)
    if kind == "safetensors":
        return ProbeResult(path, None, (), options.unsafe, skipped=NO_ARCHITECTURE[kind])
    description = read_model(path)
    if description.format == "torchscript":
        from bncheck.probe import torchscript_model

        return torchscript_model.probe(path, description, options, step)
    if kind != "pytorch":
        raise ModelReadError(f"no probe for {kind} files")
    # Layers found in pickled module objects carry their class; a state dict's only their names.
    pickled_model = any(
        layer.class_name != torch_layers.FOUND_BY_TENSORS for layer in description.layers
    )
    skipped = PICKLED_MODEL if pickled_model else NO_ARCHITECTURE[kind]
    return ProbeResult(path, None, (), options.unsafe, skipped=skipped)
