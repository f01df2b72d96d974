"""The file lacks some of a BatchNorm layer's arrays.

A model or weights file describes a BatchNorm layer (by its configuration, or by holding some of
its variables) but holds only some of its arrays: say gamma, beta and moving_mean, but no
moving_variance. Keras refuses to load such a file ("weight count mismatch", or a missing
dataset), and a tool that restores whatever it finds leaves the missing arrays at their initial
values: without its moving statistics the layer normalises with mean 0 and variance 1 at
inference, which describes no real activations.

Why it happens: a conversion, pruning or export script that wrote the arrays itself and skipped
some (often the non-trainable moving statistics), a file edited by hand, or a copy that lost
part of its content.

How to fix: export the weights again from the original model or checkpoint. If only the moving
statistics are lost and the model can be rebuilt in code, load the other arrays into it and
re-estimate the statistics from data before saving it again.

Passing: ``model_weights/bn/{gamma, beta, moving_mean, moving_variance}``.
Failing: ``model_weights/bn/{gamma, beta, moving_mean}``: moving_variance is missing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import ModelDescription

ID = "BN018"
NAME = "incomplete-layer-weights"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "model"
OPTIONS: Mapping[str, float] = {}


def check(description: ModelDescription, options: Mapping[str, float]) -> Iterator[Problem]:
    for layer in description.incomplete:
        if layer.present:
            message = (
                f"the file has {_listed(layer.present, 'and')} but no "
                f"{_listed(layer.missing, 'or')}: Keras cannot load this layer as saved, and "
                "restoring the rest would leave the missing arrays at their initial values"
            )
        else:
            message = (
                f"the file has none of the layer's arrays ({_listed(layer.missing, 'and')}): "
                "Keras cannot load this layer as saved"
            )
        yield Problem(
            message=message,
            layer=layer.path,
            details={
                "present": list(layer.present),
                "missing": list(layer.missing),
                "source": layer.source,
            },
        )


def _listed(names: tuple[str, ...], conjunction: str) -> str:
    if len(names) == 1:
        return names[0]
    return f"{', '.join(names[:-1])} {conjunction} {names[-1]}"
