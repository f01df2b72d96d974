"""The saved graph calls the layer with ``training=True``, so it uses batch statistics at inference.

A functional model built with ``bn(x, training=True)`` records that argument in its graph. The
layer then normalises every batch with that batch's own mean and variance whenever the model is
called without a ``training`` argument, as serving code and custom loops call it (``model(x)``),
and in tf.keras also in ``model.predict`` (Keras 3's ``predict`` passes ``training=False``, which
overrides the recorded argument): a sample's prediction depends on the other samples in its
batch, a batch of one gives garbage, and the moving statistics are never used.

It is reported as information only when the layer is frozen (``trainable=False``), because then
Keras runs it in inference mode regardless of the argument.

How to fix: build the model with ``bn(x)`` and let Keras pass the mode (``fit`` trains,
``predict`` infers); for Monte-Carlo-style sampling at inference use a dedicated layer instead.

Passing: ``x = BatchNormalization()(x)``.
Failing: ``x = BatchNormalization()(x, training=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Escalation, Problem, Severity
from bncheck.model import BNLayer

ID = "BN010"
NAME = "hardcoded-training-call"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "static"
OPTIONS: Mapping[str, float] = {}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    calls = [i for i, kwargs in enumerate(layer.call_kwargs) if kwargs.get("training") is True]
    if not calls:
        return
    frozen = layer.trainable is False
    effect = (
        "but trainable=False makes Keras run it in inference mode anyway"
        if frozen
        else "so it normalises with batch statistics when called as model(x) at inference"
    )
    yield Problem(
        message=layer.vocabulary.translate(
            f"the saved graph calls the layer with training=True, {effect}"
        ),
        layer=layer.path,
        details={"calls": calls, "frozen": frozen},
        escalation=Escalation.MITIGATED if frozen else None,
    )
