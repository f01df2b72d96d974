"""TensorFlow checkpoints: TF1 ``Saver`` checkpoints, TF2 ``tf.train.Checkpoint`` and tf.keras
``save_weights`` in TF format.

A checkpoint is a prefix ``P`` with an index ``P.index`` and data shards
``P.data-00000-of-00001``. The user may name the prefix, the index, a data shard, the directory, or
its ``checkpoint`` state file (whose recorded path may be relative, stale, or absolute from the
machine that trained); a state file that leads out of its folder is refused. Only the index and the
BatchNorm variables are read, never the rest of the data, and without TensorFlow
(``tensor_bundle.py``).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from math import prod
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import (
    INFERRED_BY_NAMES,
    BNLayer,
    CheckpointContents,
    CheckpointGroup,
    ModelDescription,
)
from bncheck.readers.codecs.h5util import MAX_BN_VALUES
from bncheck.readers.keras.keras3_layout import check_shapes
from bncheck.readers.tensorflow import tf_graph
from bncheck.readers.tensorflow.checkpoint_layout import (
    OBJECT_GRAPH_KEY,
    check_graph_size,
    graph_variables,
    name_scope_groups,
    natural_key,
    object_graph_groups,
)
from bncheck.readers.tensorflow.tensor_bundle import INDEX_SUFFIX, TensorBundle
from bncheck.readers.tensorflow.tf_protos import message_class
from bncheck.records import record

STATE_FILE = "checkpoint"
_DATA_SHARD = re.compile(r"^(.*)\.data-(\d{5})-of-(\d{5})$")
_RECORDED_PATH = re.compile(
    r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"\s*$', re.MULTILINE
)
_ESCAPE = re.compile(r"\\(.)")
#: Largest ``checkpoint`` state file read: a few lines per checkpoint kept.
MAX_STATE_FILE_BYTES = 1 << 20
#: Largest serialized object graph read: a few hundred bytes per variable (some 30,000
#: variables), and parsing costs twenty-odd times its size at worst.
MAX_OBJECT_GRAPH_BYTES = 8 << 20
#: Most values of the BatchNorm arrays read, all layers together (each layer counts its own
#: arrays, shared or not): millions of channels, far beyond any real network.
MAX_TOTAL_BN_VALUES = 1 << 24


def no_config_note(format_name: str) -> str:
    """What a checkpoint, or a SavedModel without Keras metadata, does not record."""
    where = "the SavedModel" if format_name == "savedmodel" else "the checkpoint"
    return (
        f"{where} records no layer configuration for these layers: momentum, epsilon, trainable "
        "flags and initializers are unknown; Keras's default initial values (gamma 1, beta 0, "
        "moving_mean 0, moving_variance 1) are assumed"
    )


@record
class LayerSettings:
    """What a layer's configuration says about it, where something records it."""

    class_name: str
    """Keras class name, e.g. ``BatchNormalization``."""
    settings: Mapping[str, Any]
    """Configuration fields of ``BNLayer`` (``keras_config.bn_settings``)."""


def read(path: str) -> ModelDescription:
    resolved, notes = resolve_prefix(path)
    checkpoint = CheckpointFile(resolved)
    description = describe(path, "checkpoint", checkpoint, variable_groups(checkpoint), {}, notes)
    # TF1's Saver.save writes the graph beside the checkpoint (PREFIX.meta) unless told not to.
    moments = tf_graph.batch_moments(Path(f"{resolved}.meta"), saved_model=False)
    return replace(description, batch_moments=moments)


def resolve_prefix(path: str) -> tuple[str, list[str]]:
    """The checkpoint prefix the user means, and notes on any choice made to find it."""
    target = Path(path)
    if target.is_dir():
        return _prefix_in_directory(target)
    if target.name == STATE_FILE and target.is_file():
        return _prefix_in_directory(target.parent)
    if target.name.endswith(INDEX_SUFFIX) and target.is_file():
        return path[: -len(INDEX_SUFFIX)], []
    shard = _DATA_SHARD.match(path)
    if shard and Path(shard.group(1) + INDEX_SUFFIX).is_file():
        return shard.group(1), []
    if Path(path + INDEX_SUFFIX).is_file():
        return path, []
    raise ModelReadError(f"no checkpoint index {target.name}{INDEX_SUFFIX}")


def _prefix_in_directory(directory: Path) -> tuple[str, list[str]]:
    state = directory / STATE_FILE
    recorded = _recorded_path(state) if state.is_file() else None
    if recorded is not None:
        # The state file lies beside its checkpoint, so its own directory comes first: a recorded
        # absolute path may be from the machine that trained, or name a copy that is gone.
        name = re.split(r"[\\/]", recorded)[-1]
        recorded_here = directory / recorded
        for candidate in (directory / name, recorded_here):
            if Path(f"{candidate}{INDEX_SUFFIX}").is_file():
                _refuse_outside(directory, str(candidate), recorded)
                moved = candidate.resolve() != recorded_here.resolve()
                note = f"the checkpoint file records {recorded}; read {name} beside it instead"
                return str(candidate), [note] if moved else []
    prefixes = sorted(
        (str(index)[: -len(INDEX_SUFFIX)] for index in directory.glob("*" + INDEX_SUFFIX)),
        key=natural_key,
    )
    if not prefixes:
        if recorded is not None:
            raise ModelReadError(
                f"the checkpoint file records {recorded}, which is not in {directory} either"
            )
        raise ModelReadError(f"no checkpoint index (*{INDEX_SUFFIX}) in {directory}")
    latest = prefixes[-1]
    _refuse_outside(directory, latest, None)
    notes = []
    if recorded is not None:
        notes.append(
            f"the checkpoint file records {recorded}, which does not exist; "
            f"read {_name(latest)}, the latest checkpoint in the directory"
        )
    elif len(prefixes) > 1:
        notes.append(
            f"{len(prefixes)} checkpoints in the directory; read the latest, {_name(latest)} "
            "(name a prefix to choose another)"
        )
    return latest, notes


def _refuse_outside(directory: Path, prefix: str, recorded: str | None) -> None:
    """A checkpoint found through a folder must lie in it: its index and data shards, once
    ``..``, absolute paths and links are resolved."""
    folder = directory.resolve()
    head, name = os.path.split(prefix)  # "" for an index named ".index"
    shards = Path(head).glob(f"{glob.escape(name)}.data-*")
    files = [Path(f"{prefix}{INDEX_SUFFIX}"), *shards]
    for file in files:
        if not file.resolve().is_relative_to(folder):
            what = f"the checkpoint file records {recorded}, which" if recorded else file.name
            raise ModelReadError(
                f"{what} leads outside the checkpoint's folder {directory}: refused"
            )


def _recorded_path(state: Path) -> str | None:
    """``model_checkpoint_path`` of a ``checkpoint`` state file (protobuf text format)."""
    try:
        if state.stat().st_size > MAX_STATE_FILE_BYTES:
            raise ModelReadError(
                f"the checkpoint file {state} is larger than {MAX_STATE_FILE_BYTES >> 20} MiB: "
                "not a checkpoint state file"
            )
        text = state.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ModelReadError(f"cannot read {state} ({exc.strerror or exc})") from None
    found = _RECORDED_PATH.search(text)
    return _ESCAPE.sub(r"\1", found.group(1)) if found else None


class CheckpointFile:
    """An open checkpoint: variable shapes and types from the index, arrays read on demand."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._bundle = TensorBundle(prefix)
        self.shapes: dict[str, tuple[int, ...]] = {
            key: entry.shape for key, entry in self._bundle.entries.items()
        }

    def object_graph(self) -> Any | None:
        """The ``TrackableObjectGraph`` of an object-based checkpoint; ``None`` for name-based."""
        if OBJECT_GRAPH_KEY not in self.shapes:
            return None
        from google.protobuf.message import DecodeError

        if prod(self.shapes[OBJECT_GRAPH_KEY]) != 1:
            raise ModelReadError(
                f"the checkpoint's object graph is of shape {list(self.shapes[OBJECT_GRAPH_KEY])}"
                ", not one string"
            )
        strings = self._bundle.read_strings(OBJECT_GRAPH_KEY, MAX_OBJECT_GRAPH_BYTES)
        if len(strings) != 1:
            raise ModelReadError(
                f"the checkpoint's object graph is {len(strings)} strings, not one"
            )
        graph = message_class("TrackableObjectGraph")()
        try:
            graph.ParseFromString(strings[0])
        except DecodeError as exc:
            raise ModelReadError(f"the checkpoint's object graph is corrupt ({exc})") from None
        check_graph_size(graph, "the checkpoint's object graph")
        return graph

    def read_arrays(self, keys: Sequence[str]) -> dict[str, np.ndarray]:
        """BatchNorm arrays, as floats."""
        total = sum(prod(self.shapes[key]) for key in keys)
        if total > MAX_TOTAL_BN_VALUES:
            raise ModelReadError(
                f"the checkpoint's {len(keys)} BatchNorm arrays hold {total} values, more than "
                f"the {MAX_TOTAL_BN_VALUES} bncheck reads"
            )
        for key in keys:
            size = int(np.prod(self.shapes[key]))
            if size == 0:
                raise ModelReadError(f"{key} is empty")
            if size > MAX_BN_VALUES:
                raise ModelReadError(f"{key} claims {size} values, too many for a BatchNorm array")
        return {
            key: array if array.dtype.kind == "f" and array.itemsize >= 4 else array.astype("f4")
            for key, array in self._bundle.read_arrays(keys).items()
        }


def variable_groups(checkpoint: CheckpointFile) -> list[CheckpointGroup]:
    """BatchNorm groups found by the variables' names or owners."""
    graph = checkpoint.object_graph()
    if graph is None:
        return name_scope_groups(checkpoint.shapes)
    return object_graph_groups(graph_variables(graph, checkpoint.shapes), checkpoint.shapes)


def describe(
    path: str,
    format_name: str,
    checkpoint: CheckpointFile,
    groups: Sequence[CheckpointGroup],
    configured: Mapping[str, LayerSettings],
    notes: Sequence[str],
) -> ModelDescription:
    """A description whose layers are the groups with both moving statistics; ``configured``
    gives the recorded configuration of some groups, by path."""
    complete = [group for group in groups if not group.missing_moving_stats]
    arrays = checkpoint.read_arrays([key for group in complete for key in group.keys.values()])
    layers = [_layer(arrays, group, configured.get(group.path)) for group in complete]
    all_notes = list(notes)
    if any(group.path not in configured for group in groups):
        all_notes.append(no_config_note(format_name))
    return ModelDescription(
        path=path,
        format=format_name,
        layers=tuple(layers),
        notes=tuple(all_notes),
        checkpoint=CheckpointContents(prefix=checkpoint.prefix, groups=tuple(groups)),
    )


def _layer(
    read: Mapping[str, np.ndarray], group: CheckpointGroup, configured: LayerSettings | None
) -> BNLayer:
    arrays = {name: read[key] for name, key in group.keys.items()}
    check_shapes(arrays, group.path)
    common: dict[str, Any] = {
        "path": group.path,
        "name": group.path.rsplit("/", 1)[-1],
        "source": ", ".join(group.keys.values()),
    }
    if configured is not None:
        return BNLayer.from_arrays(
            arrays, class_name=configured.class_name, **common, **configured.settings
        )
    return BNLayer.without_config(arrays, class_name=INFERRED_BY_NAMES, **common)


def _name(prefix: str) -> str:
    """The prefix without its directory; empty for files named ``.index``."""
    return "" if prefix.endswith(("/", "\\")) else Path(prefix).name
