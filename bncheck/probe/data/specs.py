"""What data is matched to: a model's inputs (``InputSpec``), the batches served to it
(``Batch``), and the ``Dataset`` every data source implements (array files and image folders in
``bncheck.probe.data``, TFRecords and dataset functions in ``bncheck.probe.data.streams``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe.results import ProbeData
from bncheck.records import record

#: The array of an ``.npz`` file that holds labels rather than an input.
LABELS_KEY = "y"
#: The array of an ``.npz`` file that feeds a model's only input whatever the input's name.
INPUTS_KEY = "x"


@record
class InputSpec:
    """One input of a model, as the model declares it."""

    name: str
    shape: tuple[int | None, ...]
    """Including the batch dimension; ``None`` for unknown dimensions."""
    dtype: str
    """NumPy dtype name, e.g. ``float32`` or ``int32``."""

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"

    def describe(self) -> str:
        dims = ", ".join("None" if dim is None else str(dim) for dim in self.shape)
        return f"{self.name!r} ({dims}) {self.dtype}"


#: Shapes given with ``--input-shape``, without the batch dimension, by input name; the key
#: ``None`` stands for "the only input".
InputShapes = Mapping[str | None, tuple[int, ...]]


@record
class Batch:
    """One batch: an array per model input, in input order, and the labels if there are any."""

    inputs: list[np.ndarray]
    labels: np.ndarray | None = None

    @property
    def size(self) -> int:
        return len(self.inputs[0])


class Dataset:
    """Real data matched to a model's inputs, served in shuffled batches."""

    source: str
    specs: list[InputSpec]
    labelled: bool
    available: int | None
    """Samples the data holds (``None`` where unknown)."""
    integer_inputs: list[str]
    """Float inputs the data gives whole numbers (unscaled pixels, say)."""

    def batches(
        self, batch_size: int, seed: int, samples: int | None, whole: bool = False
    ) -> Iterator[Batch]:
        """Shuffled (seeded) batches of ``batch_size`` covering at most ``samples`` samples,
        every one of them: the last batch may be short, as in ``fit`` and ``predict`` (its
        statistics weigh by its samples). With ``whole``, a short last batch after full ones is
        left out."""
        raise NotImplementedError

    def describe(self, batches: Sequence[Batch] | int, samples: int, batch_size: int) -> ProbeData:
        count = batches if isinstance(batches, int) else len(batches)
        return ProbeData(
            real=True,
            source=self.source,
            samples=samples,
            inputs=tuple((spec.name, (batch_size, *_dims(spec))) for spec in self.specs),
            batch_size=batch_size,
            batches=count,
            available=self.available,
            labelled=self.labelled,
        )


def _dims(spec: InputSpec) -> tuple[int, ...]:
    return tuple(-1 if dim is None else int(dim) for dim in spec.shape[1:])


def check_shape(array: np.ndarray, spec: InputSpec, where: str) -> None:
    fits = array.ndim == len(spec.shape) and all(
        want is None or want == got
        for want, got in zip(spec.shape[1:], array.shape[1:], strict=True)
    )
    if not fits:
        raise UsageError(
            f"{where}: an array of shape {tuple(array.shape)} does not fit input {spec.describe()}"
        )
    if array.dtype.kind not in "fiub":
        raise UsageError(f"{where}: the array for {spec.name!r} is not numeric")
