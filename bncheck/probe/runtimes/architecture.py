"""Weights-only files run in the architecture of another file of the same network.

A ``.weights.h5`` (``ModelCheckpoint(save_weights_only=True)``, ``model.save_weights``), a legacy
``save_weights`` ``.h5`` or sharded ``.weights.json`` holds no architecture. ``--architecture
MODEL`` names a ``.keras`` or full ``.h5`` file of the same network (typically the untrained
model saved before ``fit``): the probe and ``recalibrate`` load that model as they load any
(safety scan first), then load the weights into it with ``model.load_weights``, as Keras does, so
the weights fit or Keras says where they do not.

The weights file's description (``paired``) then takes each BatchNorm layer's path and settings
(momentum, epsilon, trainable flags) from the architecture, and keeps the arrays and where they
sit in the weights file: that is what ``recalibrate`` writes back. The pairing is checked against
the loaded model (``check_loaded``): each layer's moving statistics must be the very values Keras
loaded into it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError, UsageError
from bncheck.model import ModelDescription
from bncheck.readers.keras.weights_h5 import NO_CONFIG_NOTE
from bncheck.text import shown

#: The formats (``ModelDescription.format``) of the files that hold a whole Keras model an
#: ``--architecture`` may be.
ARCHITECTURE_FORMATS = ("keras", "h5")
#: The format of a weights-only Keras file, sharded or not: what ``--architecture`` is for.
WEIGHTS_ONLY = "weights-h5"


def read_architecture(architecture: str, contained: bool = True) -> ModelDescription:
    """What the ``--architecture`` file holds, read in a worker process unless ``contained`` is
    false (the caller already runs in one); a usage error unless it is a ``.keras`` or full
    ``.h5`` model, a ``ModelReadError`` naming it when it cannot be read."""
    from bncheck.isolation import read_contained
    from bncheck.readers import read_model

    if not os.path.isfile(architecture):
        raise UsageError(f"--architecture {architecture}: no such file")
    try:
        found = read_contained(read_model, architecture) if contained else read_model(architecture)
    except ModelReadError as exc:
        raise ModelReadError(f"--architecture {shown(architecture)}: {exc}") from None
    if found.format not in ARCHITECTURE_FORMATS:
        raise UsageError(
            f"--architecture {architecture}: not a .keras or full .h5 model (a file that holds "
            "the architecture, not weights only)"
        )
    return found


def paired(weights: ModelDescription, architecture: ModelDescription) -> ModelDescription:
    """``weights`` with each BatchNorm layer named and set as the architecture's layer it loads
    into: matched by path (with or without the outermost model's name), else, when both hold the
    same number of layers, by position. Raises ``ModelReadError`` naming the first layer that
    does not fit."""
    targets = list(architecture.layers)
    if len(weights.layers) != len(targets):
        raise ModelReadError(
            f"the weights hold {len(weights.layers)} BatchNorm layers, the architecture "
            f"{len(targets)}: they are not the same network"
        )
    by_path = {_inner(layer.path): layer for layer in targets}
    found = [by_path.get(_inner(layer.path)) for layer in weights.layers]
    matched = [target for target in found if target is not None]
    if len({id(target) for target in matched}) != len(targets):
        matched = targets  # the names differ: Keras 3 loads by position within each class
    layers = []
    for stored, target in zip(weights.layers, matched, strict=True):
        if stored.channels != target.channels:
            raise ModelReadError(
                f"layer {target.path} has {target.channels} channels in the architecture, "
                f"{stored.channels} in the weights: they are not the same network"
            )
        layers.append(stored.configured_as(target))
    notes = tuple(note for note in weights.notes if note != NO_CONFIG_NOTE)
    note = (
        f"weights-only file run in the architecture of {architecture.path} (--architecture): "
        "momentum, epsilon and trainable flags are that file's"
    )
    return replace(weights, layers=tuple(layers), notes=(note, *notes))


def _inner(path: str) -> str:
    return path.split("/", 1)[-1]


def check_loaded(model_layers: Sequence[tuple[str, Any]], description: ModelDescription) -> None:
    """Raise ``ModelReadError`` unless each layer of ``description`` (``paired``) is a layer of
    the loaded model holding, as its moving statistics, the arrays the description read from the
    weights file: the locations written back are then the ones Keras loaded."""
    live: Mapping[str, Any] = dict(model_layers)
    for layer in description.layers:
        target = live.get(layer.path)
        if target is None:
            raise ModelReadError(f"the architecture has no BatchNorm layer {layer.path}")
        if not (
            _same(target.moving_mean, layer.moving_mean)
            and _same(target.moving_variance, layer.moving_variance)
        ):
            raise ModelReadError(
                f"layer {layer.path}: the moving statistics Keras loaded are not those the "
                "weights file holds for it, so bncheck cannot tell where they are stored"
            )


def _same(variable: Any, stored: np.ndarray) -> bool:
    loaded = np.asarray(variable.numpy(), dtype=np.float64).reshape(-1)
    return bool(np.array_equal(loaded, np.asarray(stored, dtype=np.float64).reshape(-1)))


def untouched(description: ModelDescription) -> dict[str, bool]:
    """By layer path, whether the statistics never moved while gamma and beta trained."""
    from bncheck import verdict

    return {layer.path: bool(verdict.statistics_never_moved(layer)) for layer in description.layers}
