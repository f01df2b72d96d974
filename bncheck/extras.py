"""bncheck's optional parts, and the one-line answer when one is not installed.

The core reads every format without them. Running models (``--probe``, ``--data``,
``recalibrate``) needs TensorFlow and Keras, ``bncheck plot`` needs matplotlib.
"""

from __future__ import annotations

from importlib.util import find_spec

from bncheck.errors import UsageError
from bncheck.probe.options import ProbeOptions

#: Extra -> (what it brings, the modules it must provide); names as in pyproject.toml.
EXTRAS = {
    "tensorflow": ("TensorFlow", ("tensorflow", "keras")),
    "plot": ("matplotlib", ("matplotlib",)),
}


def require(extra: str, purpose: str) -> None:
    """``UsageError`` naming the ``pip install`` to run when ``extra`` is not installed. Looks
    the modules up without importing them: importing TensorFlow takes seconds."""
    what, modules = EXTRAS[extra]
    if any(find_spec(module) is None for module in modules):
        raise UsageError(f'{purpose} needs {what}: pip install "bncheck[{extra}]"')


def require_probe(probe: ProbeOptions | None) -> None:
    """When models are to be run, TensorFlow must be there."""
    if probe is not None:
        require("tensorflow", "--data" if probe.data is not None else "--probe")
