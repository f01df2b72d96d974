"""The layer is frozen (``trainable=False``), which in TF2/Keras 3 also fixes its mode.

Since TensorFlow 2.0, ``trainable=False`` on a BatchNormalization layer (or on a model that
contains it) makes the layer run in inference mode even inside ``fit()``: it normalises with its
moving statistics and never updates them. That is what you want when fine-tuning a pretrained
base, and a surprise when you froze the layer for another reason and expected its statistics to
adapt to new data.

How to fix: nothing to fix if the layer belongs to a pretrained base you trained a head on top
of: the head learned with these statistics, and re-estimating them on new data can break it (a
base fit on digits 0-4 under a head fit on all ten: 60.2% held-out accuracy, 46.9% after
recalibrating the base; ``bncheck recalibrate`` keeps frozen layers by default). If the
statistics should adapt to new data, unfreeze the layer (``trainable=True``) and train on, so
that the layers after it adapt with it.

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
        message=layer.vocabulary.translate(
            "trainable=False: the layer runs in inference mode even inside fit(), using and "
            "never updating its moving statistics"
        ),
        layer=layer.path,
    )
