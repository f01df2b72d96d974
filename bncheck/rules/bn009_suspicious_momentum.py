"""momentum is low, usually PyTorch's convention copied into Keras.

Keras's momentum is the weight of the *old* statistics: ``moving = momentum * moving + (1 -
momentum) * batch``. PyTorch's ``momentum=0.1`` is the weight of the *new* batch, so it means
Keras ``momentum=0.9``. Copied as-is, Keras keeps only 10% of the history at each step: the
moving statistics describe roughly the last batch only and jump from batch to batch, so
inference depends on which batch happened to come last.

PyTorch files are judged in PyTorch's convention, where momentum is the weight of the new batch:
there momentum 0.1 (Keras's 0.9, PyTorch's default) passes, and the mistake is the mirror image,
Keras's 0.99 copied into PyTorch, which keeps 1% of the history (the threshold applies to the
Keras equivalent, ``1 - momentum``).

A file records the last momentum configured, not necessarily the one training used (a value
set after ``compile()`` does not reach the compiled train step): ``bncheck.keras.BatchNormGuard``
measures what the statistics did during training.

How to fix: use ``momentum = 1 - pytorch_momentum`` (0.9 for PyTorch's default 0.1); Keras's own
default is 0.99.

Options:
  min_momentum: momentum below this is reported.

Passing: momentum 0.9, 0.99.
Failing: momentum 0.1.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer

ID = "BN009"
NAME = "suspicious-momentum"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"min_momentum": 0.5}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    kept = layer.keras_momentum
    if layer.momentum is None or kept is None or kept >= options["min_momentum"]:
        return
    words = layer.vocabulary
    if not words.momentum_keeps_history:
        own = words.momentum(kept)
        message = (
            f"momentum={own:g} keeps only {kept:.0%} of the old statistics at each "
            f"step; in {words.framework} momentum weighs the new batch (Keras's momentum={own:g} "
            f"is {words.framework}'s {kept:g}; PyTorch's default is 0.1)"
        )
    else:
        message = (
            f"momentum={kept:g} keeps only {kept:.0%} of the old statistics at each step; "
            f"in {words.framework} momentum weighs the history (PyTorch's momentum={kept:g} is "
            f"{words.framework}'s {1 - kept:g})"
        )
    yield Problem(
        message=message,
        layer=layer.path,
        details={"momentum": layer.momentum, "min_momentum": options["min_momentum"]},
    )
