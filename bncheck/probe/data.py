"""Data to run a model on: ``.npy``/``.npz`` files, image folders, or a synthetic batch.

Array files are memory-mapped where NumPy allows it (``.npy``), so a batch reads only its rows.
Image folders are streamed by Keras's ``image_dataset_from_directory``. Every problem with the
data is a ``UsageError`` naming the option and the reason.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe.results import ProbeData


@dataclass(frozen=True)
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


def parse_input_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``"8,8,1"`` or ``"image=8,8,1"`` -> ``(name or None, dims)``."""
    name, _, dims_text = text.rpartition("=")
    try:
        dims = tuple(int(part) for part in dims_text.split(","))
    except ValueError:
        raise UsageError(
            f"--input-shape {text!r}: expected [NAME=]D1,D2,... with whole numbers"
        ) from None
    if not dims or any(dim <= 0 for dim in dims):
        raise UsageError(f"--input-shape {text!r}: dimensions must be positive")
    return (name or None), dims


class ArraySource:
    """Arrays from a ``.npy`` file (one input) or an ``.npz`` file (one array per input name)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.arrays = _load_arrays(path)

    def match(self, specs: Sequence[InputSpec]) -> list[np.ndarray]:
        """One array per input, in input order, checked against the input's shape."""
        names = list(self.arrays)
        if len(specs) > 1 and names == [None]:
            raise UsageError(
                f"--data {self.path}: the model has {len(specs)} inputs "
                f"({', '.join(spec.name for spec in specs)}); pass an .npz file with one array "
                "per input name"
            )
        matched = []
        for spec in specs:
            if spec.name in self.arrays:
                array = self.arrays[spec.name]
            elif len(specs) == 1 and len(names) == 1:
                array = self.arrays[names[0]]
            else:
                raise UsageError(
                    f"--data {self.path} has no array named {spec.name!r} "
                    f"(it holds {', '.join(str(n) for n in names)})"
                )
            _check_shape(array, spec, self.path)
            matched.append(array)
        counts = {len(array) for array in matched}
        if len(counts) > 1:
            raise UsageError(f"--data {self.path}: the arrays hold different numbers of samples")
        if 0 in counts:
            raise UsageError(f"--data {self.path} holds no samples")
        return matched


def _load_arrays(path: str) -> dict[str | None, np.ndarray]:
    target = Path(path)
    if not target.is_file():
        raise UsageError(f"--data {path}: no such file")
    try:
        if zipfile.is_zipfile(target):
            with np.load(target, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        return {None: np.load(target, mmap_mode="r", allow_pickle=False)}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(f"--data {path} is not a readable .npy or .npz file ({reason})") from None


def _check_shape(array: np.ndarray, spec: InputSpec, path: str) -> None:
    fits = array.ndim == len(spec.shape) and all(
        want is None or want == got
        for want, got in zip(spec.shape[1:], array.shape[1:], strict=True)
    )
    if not fits:
        raise UsageError(
            f"--data {path}: an array of shape {tuple(array.shape)} does not fit input "
            f"{spec.describe()}"
        )
    if array.dtype.kind not in "fiub":
        raise UsageError(f"--data {path}: the array for {spec.name!r} is not numeric")


def pick_rows(arrays: Sequence[np.ndarray], count: int, seed: int) -> list[np.ndarray]:
    """``count`` samples drawn at random (without replacement), as in-memory arrays."""
    total = len(arrays[0])
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(total, size=min(count, total), replace=False))
    return [np.asarray(array[rows]) for array in arrays]


def shuffled_batches(
    arrays: Sequence[np.ndarray], batch_size: int, seed: int, limit: int | None
) -> Iterator[list[np.ndarray]]:
    """The whole data in shuffled batches; only one batch is in memory at a time."""
    order = np.random.default_rng(seed).permutation(len(arrays[0]))
    starts = range(0, len(order), batch_size)
    for number, start in enumerate(starts):
        if limit is not None and number >= limit:
            return
        rows = np.sort(order[start : start + batch_size])
        yield [np.asarray(array[rows]) for array in arrays]


class ImageFolder:
    """A directory of images, streamed in shuffled batches by Keras's
    ``image_dataset_from_directory``: only the file list and a few batches are in memory."""

    def __init__(
        self,
        path: str,
        spec: InputSpec,
        image_size: tuple[int, int],
        rescale: float | None,
        batch_size: int,
        seed: int,
    ) -> None:
        import keras

        channels = spec.shape[-1] if len(spec.shape) == 4 else None
        modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
        if channels not in modes:
            raise UsageError(
                f"--data {path}: image folders feed models whose one input is (height, width, "
                f"1, 3 or 4 channels); this model's input is {spec.describe()}"
            )
        declared = spec.shape[1:3]
        if any(
            want is not None and want != got for want, got in zip(declared, image_size, strict=True)
        ):
            raise UsageError(
                f"--image-size {image_size[0]} {image_size[1]} does not fit input {spec.describe()}"
            )
        try:
            self.dataset = keras.utils.image_dataset_from_directory(
                path,
                labels=None,
                color_mode=modes[channels],
                batch_size=batch_size,
                image_size=image_size,
                shuffle=True,
                seed=seed,
                verbose=False,
            )
        except ValueError as exc:
            raise UsageError(f"--data {path}: {' '.join(str(exc).split())}") from None
        self.rescale = rescale
        self.dtype = spec.dtype

    @property
    def batch_count(self) -> int:
        return int(self.dataset.cardinality())

    def batches(self, limit: int | None) -> Iterator[list[np.ndarray]]:
        for number, images in enumerate(self.dataset):
            if limit is not None and number >= limit:
                return
            values = images.numpy()
            if self.rescale is not None:
                values = values * self.rescale
            yield [values.astype(self.dtype)]


def cast_to_inputs(batch: Sequence[np.ndarray], specs: Sequence[InputSpec]) -> list[np.ndarray]:
    return [np.asarray(array, dtype=spec.dtype) for array, spec in zip(batch, specs, strict=True)]


def synthetic_batch(
    specs: Sequence[InputSpec], samples: int, seed: int, shapes: InputShapes
) -> list[np.ndarray]:
    """Standard-normal values in the shape of each input, for float inputs only."""
    rng = np.random.default_rng(seed)
    batch = []
    for spec in specs:
        if not spec.is_float:
            raise UsageError(
                f"input {spec.describe()} takes {spec.dtype} values (e.g. token ids) that "
                "synthetic data cannot stand for: pass real data with --data"
            )
        dims = resolve_shape(spec, shapes, single=len(specs) == 1)
        batch.append(rng.standard_normal((samples, *dims)).astype(spec.dtype))
    return batch


def resolve_shape(spec: InputSpec, shapes: InputShapes, single: bool) -> tuple[int, ...]:
    """The input's dimensions without the batch, unknown ones taken from ``--input-shape``."""
    given = shapes.get(spec.name) or (shapes.get(None) if single else None)
    declared = spec.shape[1:]
    if given is None:
        if any(dim is None for dim in declared):
            raise UsageError(
                f"input {spec.describe()} has unknown dimensions: pass --input-shape "
                f"{spec.name}=D1,D2,... or real data with --data"
            )
        return tuple(int(dim) for dim in declared if dim is not None)
    if len(given) != len(declared) or any(
        want is not None and want != got for want, got in zip(declared, given, strict=True)
    ):
        shown = ",".join(str(dim) for dim in given)
        raise UsageError(f"--input-shape {shown} does not fit input {spec.describe()}")
    return given


def describe_batch(
    batch: Sequence[np.ndarray], specs: Sequence[InputSpec], real: bool, source: str
) -> ProbeData:
    return ProbeData(
        real=real,
        source=source,
        samples=len(batch[0]),
        inputs=tuple(
            (spec.name, tuple(array.shape)) for spec, array in zip(specs, batch, strict=True)
        ),
    )
