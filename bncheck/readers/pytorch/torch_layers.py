"""PyTorch BatchNorm layers, found by their tensors.

A BatchNorm module leaves ``running_mean`` and ``running_var`` under its module path, with
``num_batches_tracked`` (since PyTorch 0.4.1, unless it is a FrozenBatchNorm) and ``weight`` and
``bias`` (when ``affine=True``): ``layer1.0.bn1.running_mean``. Any prefix holding both running
statistics is a layer; its path is the module path. Shared by the PyTorch and safetensors readers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import BatchStatisticsLayer, BNLayer, InitialValues
from bncheck.records import record

#: PyTorch's name of each array -> bncheck's (Keras's) name.
ARRAYS = {
    "weight": "gamma",
    "bias": "beta",
    "running_mean": "moving_mean",
    "running_var": "moving_variance",
}
TRACKED = "num_batches_tracked"
SYNCHRONIZED_CLASSES = frozenset({"SyncBatchNorm", "SyncBatchNormAct"})
FOUND_BY_TENSORS = "BatchNorm (by tensor names)"
PRE_041_NOTE = (
    "num_batches_tracked is 0 while the statistics moved in {layers}: PyTorch sets it to 0 when "
    "it loads a checkpoint written before version 0.4.1, so 0 alone is no sign of a problem"
)


@record
class ModuleInfo:
    """What a pickled module object says about itself (full-model pickles, TorchScript)."""

    class_name: str
    momentum: float | None = None
    """PyTorch's momentum: the weight of each new batch; ``None`` when not recorded (or PyTorch's
    ``momentum=None``, a cumulative average)."""
    epsilon: float | None = None
    num_features: int | None = None
    """The channel count the module was built with (pickled modules only)."""
    tracks_running_stats: bool | None = None
    """The module's ``track_running_stats``; ``None`` when not recorded (TorchScript keeps it as
    a constant of its code)."""


@dataclass
class Candidate:
    """The tensors under one module prefix."""

    prefix: str
    names: dict[str, str] = field(default_factory=dict)
    """Array name (``running_mean``, ``weight``, ...) -> full tensor name."""


def candidates(names: Iterable[str]) -> list[Candidate]:
    """Prefixes holding both running statistics, in the order their first tensor comes."""
    groups: dict[str, Candidate] = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        if leaf in ARRAYS or leaf == TRACKED:
            groups.setdefault(prefix, Candidate(prefix)).names[leaf] = name
    return [
        group
        for group in groups.values()
        if "running_mean" in group.names and "running_var" in group.names
    ]


def bn_layer(
    candidate: Candidate,
    read: Callable[[str], np.ndarray],
    path: str,
    source: str,
    module: ModuleInfo | None = None,
) -> BNLayer:
    """A layer from its tensors, read with ``read(full name)``; shapes are checked."""
    arrays: dict[str, np.ndarray] = {}
    for torch_name, keras_name in ARRAYS.items():
        if torch_name in candidate.names:
            array = np.asarray(read(candidate.names[torch_name]))
            if array.dtype.kind != "f":
                raise ModelReadError(f"{path}: {torch_name} holds {array.dtype} values, not floats")
            arrays[keras_name] = array.ravel()
    channels = arrays["moving_mean"].size
    for keras_name, array in arrays.items():
        if array.size != channels or channels == 0:
            torch_name = next(t for t, k in ARRAYS.items() if k == keras_name)
            raise ModelReadError(
                f"{path}: {torch_name} holds {array.size} values, running_mean {channels}"
            )
    tracked = None
    if TRACKED in candidate.names:
        counter = np.asarray(read(candidate.names[TRACKED])).ravel()
        if counter.size != 1 or counter.dtype.kind not in "iu":
            raise ModelReadError(f"{path}: num_batches_tracked is not one integer")
        tracked = int(counter[0])
    class_name = module.class_name if module is not None else FOUND_BY_TENSORS
    return BNLayer.without_config(
        arrays,
        path=path,
        name=path.rsplit(".", 1)[-1] if path else path,
        class_name=class_name,
        axis=(1,),
        momentum=module.momentum if module is not None else None,
        epsilon=module.epsilon if module is not None else None,
        synchronized=class_name in SYNCHRONIZED_CLASSES,
        source=source,
        framework="pytorch",
        num_batches_tracked=tracked,
        variance_estimator="unbiased",
    )


def pre_041_note(layers: Iterable[BNLayer]) -> str | None:
    """The note for layers whose counter is 0 although their statistics moved, if any."""
    reset = [
        layer.path for layer in layers if layer.num_batches_tracked == 0 and not _at_defaults(layer)
    ]
    if not reset:
        return None
    listed = ", ".join(reset[:3]) + (f" and {len(reset) - 3} more" if len(reset) > 3 else "")
    return PRE_041_NOTE.format(layers=listed)


def _at_defaults(layer: BNLayer) -> bool:
    initial = InitialValues()
    return bool(
        np.all(layer.moving_mean == initial.moving_mean)
        and np.all(layer.moving_variance == initial.moving_variance)
    )


def module_info(state: Mapping[Any, Any], class_name: str) -> ModuleInfo:
    """Momentum and epsilon from a pickled module's attributes, when they are plain numbers."""

    def number(key: str) -> float | None:
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    features = number("num_features")
    tracks = state.get("track_running_stats")
    return ModuleInfo(
        class_name,
        momentum=number("momentum"),
        epsilon=number("eps"),
        num_features=int(features) if features is not None and features.is_integer() else None,
        tracks_running_stats=tracks if isinstance(tracks, bool) else None,
    )


def batch_statistics_layer(
    prefix: str, module: ModuleInfo, tensors: Mapping[str, Any], path: str
) -> BatchStatisticsLayer | None:
    """The BatchNorm module at ``prefix`` as a layer without running statistics, when it is one:
    its class is a BatchNorm and it holds no running statistics (``track_running_stats=False``
    leaves them ``None``; TorchScript's trace drops them)."""
    if "BatchNorm" not in module.class_name or module.tracks_running_stats is True:
        return None

    def tensor(leaf: str) -> Any:
        return tensors.get(f"{prefix}.{leaf}" if prefix else leaf)

    if tensor("running_mean") is not None or tensor("running_var") is not None:
        return None
    channels = getattr(tensor("weight"), "numel", None)
    if module.tracks_running_stats is False:
        evidence = "track_running_stats=False"
    else:
        # TorchScript keeps the flag in its code: scripting leaves the statistics None,
        # tracing drops them.
        evidence = "the module holds none: track_running_stats=False"
    return BatchStatisticsLayer(
        path=path,
        class_name=module.class_name,
        framework="pytorch",
        evidence=evidence,
        channels=channels if isinstance(channels, int) else module.num_features,
    )
