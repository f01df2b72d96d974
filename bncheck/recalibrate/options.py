"""What ``bncheck recalibrate`` was asked to do, importable without the recalibration itself."""

from __future__ import annotations

from dataclasses import field

from bncheck.probe.options import (
    DEFAULT_MEMORY_MIB,
    DEFAULT_TIMEOUT,
    DatasetFunction,
    RecordOptions,
)
from bncheck.records import record
from bncheck.settings import Settings


@record
class RecalibrateOptions:
    """Everything ``bncheck recalibrate`` was asked to do."""

    model: str
    data: str | None
    """``.npy``/``.npz`` file or a directory of images; ``None`` with ``records`` or
    ``dataset_fn``."""
    output: str | None
    """Where to write; ``None`` with ``in_place`` means over ``model``."""
    labels: str | None = None
    """``--labels`` for ``data``."""
    in_place: bool = False
    validate: str | None = None
    """Labelled held-out data: the metric before and after decides whether to write."""
    validate_labels: str | None = None
    force: bool = False
    """Write even when the result measures worse or cannot be verified."""
    samples: int | None = None
    """Use at most this many samples of ``data``; ``None`` for all of it."""
    batch_size: int = 32
    include_frozen: bool = False
    """Re-estimate ``trainable=False`` layers too."""
    include_untouched: bool = False
    """Re-estimate layers whose statistics never moved while gamma and beta trained too."""
    image_size: tuple[int, int] | None = None
    """Height and width images are resized to (image directories only)."""
    rescale: float | None = None
    """Factor applied to image pixel values, e.g. 1/255 (image directories only)."""
    seed: int = 0
    unsafe: bool = False
    architecture: str | None = None
    """``--architecture``: the .keras or .h5 file whose architecture a weights-only MODEL's
    weights are loaded into."""
    runnable: str | None = None
    """``--runnable``: the network's ONNX or TorchScript export, run to estimate the statistics
    of a MODEL that holds no architecture (a state dict, a safetensors file)."""
    custom_objects: str | None = None
    settings: Settings = field(default_factory=Settings)
    """Rule configuration and ``--fail-on`` for the gate on the repaired model."""
    records: RecordOptions | None = None
    """``--tfrecord`` files to estimate from instead of ``data``."""
    dataset_fn: DatasetFunction | None = None
    """``--dataset-fn``: the user's function returning the dataset to estimate from."""
    strategy: str | None = None
    """``--strategy``: ``mirrored`` or ``multi-worker``; ``None`` for one device."""
    devices: tuple[str, ...] = ()
    """``--devices`` for ``mirrored``; empty for every local GPU."""
    timeout: float | None = DEFAULT_TIMEOUT
    """``--probe-timeout``: seconds loading and estimating may take (600 by default, as for the
    probe); ``None``: no limit."""
    memory_mib: int | None = DEFAULT_MEMORY_MIB
    """``--probe-memory``: resident memory the process that runs the model may use."""
