"""PyTorch files (``.pt``, ``.pth``, ``.bin``): state dicts, checkpoints, pickled models and
TorchScript archives, read without PyTorch and without running anything they name.

``torch_archive`` opens the container and ``pickle_vm`` reads the pickle into plain records. The
BatchNorm tensors are then found wherever ``torch.load`` would have put them:

- a state dict (``model.state_dict()``): names like ``layer1.0.bn1.running_mean``;
- a checkpoint holding state dicts under keys (``state_dict``, ``model``, ``ema``, ...);
- a pickled model (``torch.save(model)``): each module's ``_parameters``, ``_buffers`` and
  ``_modules``, read from the state its class would have been given, with the class's name,
  momentum and eps; the classes themselves are never imported;
- a TorchScript archive: each scripted module's attributes.

Calls the pickle asks for beyond rebuilding tensors and plain data are listed on the description
(``pickled_calls``), for BN019 to report.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck import formats
from bncheck.model import BatchStatisticsLayer, BNLayer, ModelDescription, PickledCall
from bncheck.readers.codecs import tensor_bytes
from bncheck.readers.framework_signatures import LEGACY_MAGIC, data_pickle_member
from bncheck.readers.pytorch import torch_archive, torch_layers
from bncheck.readers.pytorch.pickle_vm import PickledObject, TensorRef, short
from bncheck.readers.pytorch.torch_archive import TorchFile
from bncheck.readers.pytorch.torch_layers import ModuleInfo

STATE_DICT_NOTE = (
    "a state dict records no architecture, momentum or eps; PyTorch's initial values (weight 1, "
    "bias 0, running_mean 0, running_var 1) and eps 1e-5 are assumed"
)
TORCHSCRIPT_NOTE = (
    "TorchScript archive: momentum and eps live in its compiled code, which is not read "
    "(eps 1e-5 assumed); --probe --unsafe runs a scripted archive, not a traced one"
)
LEGACY_NOTE = "PyTorch legacy format (torch.save before PyTorch 1.6, or without the zip format)"
_LISTED_CLASSES = 5


@dataclass
class Root:
    """Tensors that belong together: one state dict, or one pickled module tree."""

    path: tuple[str, ...]
    """Keys and attributes from the top of the file to it; empty for the top itself."""
    tensors: dict[str, TensorRef] = field(default_factory=dict)
    """Full dotted name (``layer1.0.bn1.running_mean``) -> tensor."""
    modules: dict[str, ModuleInfo] = field(default_factory=dict)
    """Module path -> what its pickled object says; empty for state dicts."""


def read(path: str) -> ModelDescription:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        if handle.read(len(LEGACY_MAGIC)) == LEGACY_MAGIC:
            return describe(path, torch_archive.open_legacy(handle, size), "the pickle")
    with formats.open_zip(path) as archive:
        member = data_pickle_member(archive.namelist()) or "data.pkl"
        return describe(path, torch_archive.open_zip(archive), member)


def describe(path: str, torch_file: TorchFile, member: str) -> ModelDescription:
    """The BatchNorm layers of an opened PyTorch file (its tensors read while it is open)."""
    roots = find_roots(torch_file.root)
    found = _found(roots)
    batch_statistics = _batch_statistics_layers(roots)
    tensor_bytes.check_channel_total(
        sum(
            root.tensors[candidate.names["running_mean"]].numel
            for root, candidates in found
            for candidate in candidates
        )
    )
    # All at once, so that each storage is read in one pass however many layers share it.
    torch_file.read_tensors(
        root.tensors[name]
        for root, candidates in found
        for candidate in candidates
        for name in candidate.names.values()
    )
    layers = [
        torch_layers.bn_layer(
            candidate,
            functools.partial(_read_named, torch_file, root.tensors),
            path=layer_path,
            source=", ".join(candidate.names.values()),
            module=root.modules.get(candidate.prefix),
        )
        for layer_path, root, candidate in _named_layers(found)
    ]
    format_name = "torchscript" if torch_file.container == "torchscript" else "pytorch"
    return ModelDescription(
        path=path,
        format=format_name,
        layers=tuple(layers),
        notes=tuple(_notes(torch_file, found, layers)),
        pickled_calls=tuple(
            PickledCall(call.target, call.arguments, f"{member}, byte {call.position}")
            for call in torch_file.log.calls
        ),
        batch_statistics=batch_statistics,
    )


def bn_tensors(torch_file: TorchFile) -> list[tuple[str, Root, torch_layers.Candidate]]:
    """Each BatchNorm layer of an opened file: its path as ``describe`` names it, the state dict
    or module tree holding it, and its tensors' names there."""
    return _named_layers(_found(find_roots(torch_file.root)))


def _found(roots: list[Root]) -> list[tuple[Root, list[torch_layers.Candidate]]]:
    found = [(root, torch_layers.candidates(root.tensors)) for root in roots]
    return [(root, candidates) for root, candidates in found if candidates]


def _named_layers(
    found: list[tuple[Root, list[torch_layers.Candidate]]],
) -> list[tuple[str, Root, torch_layers.Candidate]]:
    named = []
    for root, candidates in found:
        outer = "/".join(root.path)
        for candidate in candidates:
            if len(found) > 1 and outer:
                layer_path = f"{outer}/{candidate.prefix}" if candidate.prefix else outer
            else:
                layer_path = candidate.prefix or outer or "(top level)"
            named.append((layer_path, root, candidate))
    return named


def _batch_statistics_layers(roots: list[Root]) -> tuple[BatchStatisticsLayer, ...]:
    """The BatchNorm modules of pickled module trees (full pickles, TorchScript) that keep no
    running statistics. A state dict cannot show them: such a layer leaves only weight and
    bias, like any affine layer."""
    found = []
    trees = [root for root in roots if root.modules]
    for root in trees:
        outer = "/".join(root.path)
        for prefix, module in root.modules.items():
            if len(trees) > 1 and outer:
                path = f"{outer}/{prefix}" if prefix else outer
            else:
                path = prefix or outer or "(top level)"
            layer = torch_layers.batch_statistics_layer(prefix, module, root.tensors, path)
            if layer is not None:
                found.append(layer)
    return tuple(found)


def _read_named(torch_file: TorchFile, tensors: dict[str, TensorRef], name: str) -> np.ndarray:
    return torch_file.read_tensor(tensors[name])


def _notes(
    torch_file: TorchFile, found: list[tuple[Root, Any]], layers: list[BNLayer]
) -> list[str]:
    notes = []
    if torch_file.container == "legacy":
        notes.append(LEGACY_NOTE)
    if torch_file.container == "torchscript":
        notes.append(TORCHSCRIPT_NOTE)
    elif any(not root.modules for root, _ in found):
        notes.append(STATE_DICT_NOTE)
    if len(found) == 1 and found[0][0].path:
        notes.append(f"BatchNorm tensors read from the entry {'/'.join(found[0][0].path)!r}")
    classes = torch_file.log.classes
    if classes and torch_file.container != "torchscript":
        listed = ", ".join(classes[:_LISTED_CLASSES])
        more = (
            f" and {len(classes) - _LISTED_CLASSES} more" if len(classes) > _LISTED_CLASSES else ""
        )
        plural = "es" if len(classes) > 1 else ""
        notes.append(
            f"the pickle holds objects of {len(classes)} class{plural}, read as inert data and "
            f"never run: {listed}{more}; torch.load(weights_only=True) refuses such files"
        )
    log = torch_file.log
    if log.call_count > len(log.calls):
        notes.append(
            f"the pickle asks for {log.call_count} calls; {len(log.calls)} are listed, the "
            "first of each function"
        )
    reset = torch_layers.pre_041_note(layers)
    if reset is not None:
        notes.append(reset)
    return notes


def find_roots(top: Any) -> list[Root]:
    """Every state dict and pickled module tree in the object ``torch.load`` would return."""
    roots: list[Root] = []
    seen: set[int] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if not isinstance(node, (dict, list, tuple, PickledObject)) or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, dict):
            tensors = {
                key: value
                for key, value in node.items()
                if isinstance(key, str) and isinstance(value, TensorRef)
            }
            if tensors:
                roots.append(Root(path, tensors))
            for key, value in node.items():
                walk(value, (*path, key if isinstance(key, str) else short(key)))
        elif isinstance(node, (list, tuple)):
            for index, value in enumerate(node):
                walk(value, (*path, str(index)))
        elif _is_module(node):
            root = Root(path)
            _flatten_module(node, "", root, seen)
            roots.append(root)
        else:
            walk(node.state, path)
            walk(node.arguments, path)

    walk(top, ())
    return roots


def _is_module(node: PickledObject) -> bool:
    """An ``nn.Module`` pickled with its ``__dict__``, or a TorchScript module object."""
    if node.kind != "instance":
        return False
    cls = node.class_ref
    if cls is not None and cls.module.startswith("__torch__"):
        return True
    state = node.state_dict()
    return any(key in state for key in ("_parameters", "_buffers", "_modules"))


def _flatten_module(node: PickledObject, prefix: str, root: Root, seen: set[int]) -> None:
    state = node.state_dict()
    cls = node.class_ref
    root.modules[prefix] = torch_layers.module_info(state, cls.name if cls else "Module")
    if any(key in state for key in ("_parameters", "_buffers", "_modules")):
        tensors = {**_entries(state.get("_parameters")), **_entries(state.get("_buffers"))}
        children = _entries(state.get("_modules"))
    else:  # TorchScript keeps parameters, buffers and submodules as plain attributes
        tensors = children = {key: value for key, value in state.items() if isinstance(key, str)}
    for name, value in tensors.items():
        if isinstance(value, TensorRef):
            root.tensors[_join(prefix, name)] = value
    for name, child in children.items():
        if isinstance(child, PickledObject) and _is_module(child) and id(child) not in seen:
            seen.add(id(child))
            _flatten_module(child, _join(prefix, name), root, seen)


def _entries(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    return {key: item for key, item in value.items() if isinstance(key, str)}


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name
