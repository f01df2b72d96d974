"""Every array of the layer is still at its initial value: the layer never trained.

gamma, beta, moving_mean and moving_variance (those the layer has) all equal their
initializers. The layer is an identity up to ``1/sqrt(1 + epsilon)``: harmless in a model that was
never meant to be trained yet, a mistake in a model that is about to be deployed.

Why it happens: a layer added after training (a new head) and saved without training; weights
that failed to load before saving; a freshly built model exported by accident.

How to fix: train the model (or the new layers), or check that the weights you meant to export
were loaded before saving.

Options:
  tolerance: largest absolute difference still counted as "equal to the initial value".

Passing: a layer whose gamma or moving statistics differ from 1 and 0.
Failing: gamma 1, beta 0, moving_mean 0, moving_variance 1 in every channel.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import BNLayer
from bncheck.rules._arrays import at_initial

ID = "BN002"
NAME = "untrained-layer"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "static"
OPTIONS: Mapping[str, float] = {"tolerance": 1e-6}


def check(layer: BNLayer, options: Mapping[str, float]) -> Iterator[Problem]:
    names = list(layer.arrays())
    if not all(at_initial(layer, name, options["tolerance"]) for name in names):
        return
    yield Problem(
        message=layer.vocabulary.translate(
            f"{', '.join(names)} are all still at their initial values: the layer never trained"
        ),
        layer=layer.path,
        details={"arrays": names, "initial_values_assumed": layer.initial.assumed},
    )
