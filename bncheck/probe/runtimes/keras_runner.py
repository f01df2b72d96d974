"""The Keras implementation of the runner protocol (``runtime.Runner``): ``passes.Passes``
over a live model, its layers described as the measurement needs them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from bncheck.probe.runtime import LayerInfo, PassResult, Statistics
from bncheck.probe.runtimes.passes import Passes


def layer_info(path: str, layer: Any) -> LayerInfo:
    return LayerInfo(
        path=path,
        trainable=bool(layer.trainable),
        epsilon=float(layer.epsilon),
        momentum=float(layer.momentum),
        moving_mean=np.asarray(layer.moving_mean.numpy()),
        moving_variance=np.asarray(layer.moving_variance.numpy()),
    )


class KerasRunner:
    """A live Keras model's BatchNorm layers run through ``Passes``."""

    fixed_batch: int | None = None  # any batch size runs

    def __init__(
        self, model: Any, layers: Sequence[tuple[str, Any]], force: Iterable[str] = ()
    ) -> None:
        self.passes = Passes(model, layers, force)
        self._layers = [layer_info(path, layer) for path, layer in layers]

    @property
    def layers(self) -> Sequence[LayerInfo]:
        return self._layers

    def __enter__(self) -> KerasRunner:
        self.passes.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.passes.__exit__(*exc)

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        return self.passes.run(inputs, *modes)

    def use_estimates(self, statistics: Statistics) -> None:
        self.passes.use_estimates(statistics)
