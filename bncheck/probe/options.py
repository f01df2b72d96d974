"""How to probe: the options of ``--probe``/``--data``, importable without the probe itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

#: Reports a probe step ("loading", "inference pass", ...) to whoever shows progress.
StepReporter = Callable[[str], None]


@dataclass(frozen=True)
class ProbeOptions:
    """How to probe, from ``--probe``, ``--data`` and friends."""

    data: str | None = None
    """``.npy``/``.npz`` file with real inputs; ``None`` for a synthetic batch."""
    batch_size: int = 32
    seed: int = 0
    """Picks the samples from ``data``, or draws the synthetic batch."""
    input_shapes: Mapping[str | None, tuple[int, ...]] = field(default_factory=dict)
    """``--input-shape`` values by input name (``None``: the only input)."""
    unsafe: bool = False
    """Load and run models that hold code (Lambda layers, foreign functions, unsafe ops)."""
    custom_objects: str | None = None
    """A Python file defining the user's own custom layers, trusted explicitly."""
