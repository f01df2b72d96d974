"""The layer is frozen (``trainable=False``), which in TF2/Keras 3 also fixes its mode.

Since TensorFlow 2.0, ``trainable=False`` on a BatchNormalization layer (or on a model that
contains it) makes the layer run in inference mode even inside ``fit()``: it normalises with its
moving statistics and never updates them. That is what you want when fine-tuning a pretrained
base, and a surprise when you froze the layer for another reason and expected its statistics to
adapt to new data.

How to fix: nothing to fix if the layer belongs to a pretrained base you are fine-tuning on top
of. If the statistics should adapt, set ``trainable=True`` on the layer, or re-estimate them on
the new data with ``bncheck recalibrate MODEL --data DATA --include-frozen -o FIXED``.

Passing: a layer with ``trainable=True``.
Failing: ``base_model.trainable = False`` for transfer learning (reported as info).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN007"
NAME = "frozen-layer"
DEFAULT_SEVERITY = Severity.INFO
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    if layer.trainable is not False:
        return
    yield Problem(
        message=(
            "trainable=False: the layer runs in inference mode even inside fit(), using and "
            "never updating its moving statistics"
        ),
        layer=layer.path,
    )
