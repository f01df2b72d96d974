"""What ``bncheck recalibrate`` was asked to do, importable without the recalibration itself."""

from __future__ import annotations

from dataclasses import dataclass, field

from bncheck.settings import Settings


@dataclass(frozen=True)
class RecalibrateOptions:
    """Everything ``bncheck recalibrate`` was asked to do."""

    model: str
    data: str
    """``.npy``/``.npz`` file or a directory of images."""
    output: str | None
    """Where to write; ``None`` with ``in_place`` means over ``model``."""
    in_place: bool = False
    batches: int | None = None
    """Use at most this many batches; ``None`` for all the data."""
    batch_size: int = 32
    include_frozen: bool = False
    """Recalibrate ``trainable=False`` layers too."""
    image_size: tuple[int, int] | None = None
    """Height and width images are resized to (image directories only)."""
    rescale: float | None = None
    """Factor applied to image pixel values, e.g. 1/255 (image directories only)."""
    seed: int = 0
    unsafe: bool = False
    custom_objects: str | None = None
    settings: Settings = field(default_factory=Settings)
    """Rule configuration and ``--fail-on`` for the gate on the repaired model."""
