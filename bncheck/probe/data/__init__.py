"""Data to run a model on: ``.npy``/``.npz`` files and image folders, with or without labels, or a
synthetic batch.

Array files are memory-mapped where NumPy allows it (``.npy``), so a batch reads only its rows.
Image folders are streamed by Keras's ``image_dataset_from_directory``. Every problem with the
data is a ``UsageError`` naming the option and the reason.

Labels come with the data in three ways: an ``.npz`` file holding an array ``y`` beside the
inputs, a ``--labels`` ``.npy`` file in the same order as the samples, or an image folder whose
images sit in one subfolder per class (classes numbered in sorted folder-name order, as Keras
numbers them).
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe.data.specs import (
    INPUTS_KEY,
    LABELS_KEY,
    Batch,
    Dataset,
    InputShapes,
    InputSpec,
    check_shape,
)
from bncheck.probe.options import DatasetFunction, RecordOptions
from bncheck.probe.results import ProbeData
from bncheck.records import record

_NPY_MAGIC = b"\x93NUMPY"
_ACCEPTED = (
    "a .npy file (one input), an .npz file (one array per input name, and optionally labels "
    f"'{LABELS_KEY}'), or a folder of images"
)


@record
class DataOptions:
    """Where real data comes from: ``--data`` and the options that shape it."""

    path: str
    """``.npy``/``.npz`` file or a folder of images."""
    labels: str | None = None
    """``--labels``: a ``.npy`` file of labels, one per sample."""
    image_size: tuple[int, int] | None = None
    """Height and width images are resized to (image folders only)."""
    rescale: float | None = None
    """Factor applied to image pixel values, e.g. 1/255 (image folders only)."""
    option: str = "--data"
    """The option that named the data, for messages."""


#: Where data comes from: ``--data`` and its options, ``--tfrecord`` files, or ``--dataset-fn``.
DataSource = DataOptions | RecordOptions | DatasetFunction


def data_source(
    path: str | None,
    labels: str | None = None,
    image_size: tuple[int, int] | None = None,
    rescale: float | None = None,
    records: RecordOptions | None = None,
    dataset_fn: DatasetFunction | None = None,
    option: str = "--data",
) -> DataSource | None:
    """The one source the options name (``None``: none), refusing options that do not apply
    to it."""
    given = [
        name
        for name, value in ((option, path), ("--tfrecord", records), ("--dataset-fn", dataset_fn))
        if value is not None
    ]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} both name data: give one")
    if path is not None:
        return DataOptions(path, labels, image_size, rescale, option)
    if labels is not None:
        if not given:
            raise UsageError(f"--labels needs {option}")
        raise UsageError(
            f"--labels goes with {option} array files: {given[0]} data carries its labels "
            "(--label for TFRecord files, (x, y) elements for a dataset)"
        )
    if image_size is not None or rescale is not None:
        raise UsageError("--image-size and --rescale apply to image folders only")
    return records or dataset_fn


class DataChoice(Protocol):
    """The data options ``inspect --data`` and ``recalibrate`` share."""

    @property
    def data(self) -> str | None: ...
    @property
    def labels(self) -> str | None: ...
    @property
    def image_size(self) -> tuple[int, int] | None: ...
    @property
    def rescale(self) -> float | None: ...
    @property
    def records(self) -> RecordOptions | None: ...
    @property
    def dataset_fn(self) -> DatasetFunction | None: ...


def chosen_source(options: DataChoice) -> DataSource | None:
    """:func:`data_source` for a command's options."""
    return data_source(
        options.data,
        options.labels,
        options.image_size,
        options.rescale,
        options.records,
        options.dataset_fn,
    )


def open_data(source: DataSource, specs: Sequence[InputSpec] | None) -> Dataset:
    """The data ``source`` names, matched to ``specs`` (``None``: a model that declares no
    inputs, which then takes its one input's shape from the data)."""
    if not isinstance(source, DataOptions):
        from bncheck.probe.data import streams

        if isinstance(source, RecordOptions):
            return streams.TFRecordData(source, specs)
        # A function returning an iterator is called again for each pass over the data. NumPy
        # arrays (x, (x, y), a dict by input name) are samples, as the Python API takes them.
        data, again = streams.call_dataset_fn(source)
        where = f"--dataset-fn {source.describe()}"
        arrays = arrays_of(data, specs)
        if arrays is None:
            return streams.StreamData(data, specs, where, again=again)
        found = ArrayData(DataOptions(source.describe(), option="--dataset-fn"), specs, arrays)
        found.source = where  # as reports name a stream from the same option
        return found
    options = source
    target = Path(options.path)
    if target.is_dir():
        if options.labels is not None:
            raise UsageError(
                f"--labels applies to array files; the classes of {options.option} "
                f"{options.path} are its subfolders"
            )
        return ImageFolder(options, specs)
    if options.image_size is not None or options.rescale is not None:
        raise UsageError("--image-size and --rescale apply to image folders only")
    return ArrayData(options, specs)


class ArrayData(Dataset):
    """Arrays from a ``.npy`` file (one input) or an ``.npz`` file (one array per input name,
    and optionally labels), with labels from the ``.npz`` or a ``--labels`` file; or arrays
    given in memory the same way (``arrays``, by input name, ``None`` for the only input)."""

    def __init__(
        self,
        options: DataOptions,
        specs: Sequence[InputSpec] | None,
        arrays: Mapping[str | None, np.ndarray] | None = None,
    ) -> None:
        self.source = options.path
        arrays = dict(load_arrays(options.path, options.option) if arrays is None else arrays)
        labels = arrays.pop(LABELS_KEY, None)
        if specs is None:
            specs = [_spec_from(arrays, options)]
        if options.labels is not None:
            if labels is not None:
                raise UsageError(
                    f"{options.option} {options.path} holds labels '{LABELS_KEY}' and --labels "
                    "names others: give one of them"
                )
            labels = _single_array(options.labels, "--labels")
        self.specs = list(specs)
        self.inputs = match_inputs(arrays, self.specs, options)
        self.count = len(self.inputs[0])
        self.available = self.count
        if self.count > 1 and all(_all_alike(array) for array in self.inputs):
            raise UsageError(
                f"every sample of {options.option} {options.path} is the same: statistics "
                "estimated from it describe no real data"
            )
        if labels is not None:
            labels = _checked_labels(labels, self.count, options)
        self.labels = labels
        self.labelled = labels is not None
        self.integer_inputs = [
            spec.name
            for array, spec in zip(self.inputs, self.specs, strict=True)
            if array.dtype.kind in "iub" and spec.is_float
        ]

    def batches(
        self, batch_size: int, seed: int, samples: int | None, whole: bool = False
    ) -> Iterator[Batch]:
        order = np.random.default_rng(seed).permutation(self.count)
        used = min(self.count, samples or self.count)
        if whole:
            used = _full_batches(used, batch_size)
        for start in range(0, used, batch_size):
            rows = np.sort(order[start : min(start + batch_size, used)])
            inputs = [
                np.asarray(array[rows], dtype=spec.dtype)
                for array, spec in zip(self.inputs, self.specs, strict=True)
            ]
            _check_finite(inputs, self.specs, self.source)
            yield Batch(
                inputs=inputs,
                labels=None if self.labels is None else np.asarray(self.labels[rows]),
            )


def _check_finite(inputs: Sequence[np.ndarray], specs: Sequence[InputSpec], source: str) -> None:
    """NaN or infinite inputs make every statistic and verdict meaningless: refuse them."""
    for array, spec in zip(inputs, specs, strict=True):
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise UsageError(
                f"the data for input {spec.name!r} in {source} holds {bad} NaN or infinite "
                "values in one batch: clean the data first"
            )


def _full_batches(count: int, batch_size: int) -> int:
    return count if count < batch_size else count - count % batch_size


def arrays_of(data: Any, specs: Sequence[InputSpec] | None) -> dict[str | None, Any] | None:
    """NumPy arrays of samples by input name (``None``: the only input), the labels as
    ``"y"``: one array, an ``(x, y)`` tuple (``x`` a tuple by input position, or a dict by
    input name) or a dict; ``None`` for data that is not arrays."""
    if isinstance(data, np.ndarray):
        return {None: data}
    if isinstance(data, Mapping) and all(isinstance(v, np.ndarray) for v in data.values()):
        return dict(data)
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], np.ndarray)):
        return None
    inputs, labels = data
    if isinstance(inputs, (list, tuple)) and specs is not None and len(inputs) == len(specs):
        inputs = {spec.name: array for spec, array in zip(specs, inputs, strict=True)}
    found = arrays_of(inputs, specs)
    return None if found is None or LABELS_KEY in found else {**found, LABELS_KEY: labels}


def load_arrays(path: str, option: str) -> dict[str | None, np.ndarray]:
    """The arrays of a ``.npy`` (key ``None``) or ``.npz`` file, refusing pickled objects."""
    target = Path(path)
    if not target.exists():
        raise UsageError(f"{option} {path}: no such file or directory")
    if not target.is_file():
        raise UsageError(f"{option} {path}: not a regular file")
    with open(target, "rb") as handle:
        head = handle.read(len(_NPY_MAGIC))
    is_npz = zipfile.is_zipfile(target)
    if not is_npz and head != _NPY_MAGIC:
        raise UsageError(f"{option} {path} is not {_ACCEPTED}")
    try:
        if is_npz:
            with np.load(target, allow_pickle=False) as npz:
                return {name: npz[name] for name in npz.files}
        return {None: np.load(target, mmap_mode="r", allow_pickle=False)}
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Python objects" in str(exc):
            raise UsageError(
                f"{option} {path} holds Python objects, which bncheck never unpickles: save "
                "plain numeric arrays (numpy.save / numpy.savez)"
            ) from None
        raise UsageError(f"{option} {path} is not a readable .npy or .npz file ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise UsageError(
            f"{option} {path} is not a readable .npy or .npz file ({reason})"
        ) from None


def _single_array(path: str, option: str) -> np.ndarray:
    arrays = load_arrays(path, option)
    if list(arrays) != [None]:
        raise UsageError(f"{option} {path}: expected a .npy file holding one array")
    return arrays[None]


def _spec_from(arrays: Mapping[str | None, np.ndarray], options: DataOptions) -> InputSpec:
    """A model that declares no inputs (subclassed) takes one input shaped like the data."""
    if len(arrays) != 1:
        raise UsageError(
            f"{options.option} {options.path}: the model declares no inputs, so bncheck cannot "
            "match several arrays to them; pass one array (a .npy, or an .npz with 'x' and "
            f"optionally '{LABELS_KEY}')"
        )
    array = next(iter(arrays.values()))
    dtype = "float32" if array.dtype.kind == "f" else str(array.dtype)
    return InputSpec("input", (None, *array.shape[1:]), dtype)


def match_inputs(
    arrays: Mapping[str | None, np.ndarray], specs: Sequence[InputSpec], options: DataOptions
) -> list[np.ndarray]:
    """One array per input, in input order, checked against the input's shape."""
    names = list(arrays)
    where = f"{options.option} {options.path}"
    if len(specs) > 1 and names == [None]:
        raise UsageError(
            f"{where}: the model has {len(specs)} inputs "
            f"({', '.join(spec.name for spec in specs)}); pass an .npz file with one array "
            "per input name"
        )
    matched = []
    for spec in specs:
        if spec.name in arrays:
            array = arrays[spec.name]
        elif len(specs) == 1 and len(names) == 1:
            array = arrays[names[0]]
        elif len(specs) == 1 and INPUTS_KEY in arrays:
            array = arrays[INPUTS_KEY]
        else:
            held = ", ".join(str(name) for name in names) or "no arrays"
            raise UsageError(f"{where} has no array named {spec.name!r} (it holds {held})")
        check_shape(array, spec, where)
        matched.append(array)
    counts = {len(array) for array in matched}
    if len(counts) > 1:
        raise UsageError(f"{where}: the arrays hold different numbers of samples")
    if 0 in counts:
        raise UsageError(f"{where} holds no samples")
    return matched


def _all_alike(array: np.ndarray) -> bool:
    """Whether every sample equals the first (a few samples first: most data differs at once)."""
    first = array[:1]
    return bool(np.array_equal(array[:256], np.broadcast_to(first, array[:256].shape))) and bool(
        np.array_equal(array, np.broadcast_to(first, array.shape))
    )


def _checked_labels(labels: np.ndarray, samples: int, options: DataOptions) -> np.ndarray:
    if labels.dtype.kind not in "fiub":
        raise UsageError(f"the labels of {options.option} {options.path} are not numeric")
    if labels.ndim == 0 or len(labels) != samples:
        raise UsageError(
            f"{len(labels) if labels.ndim else 0} labels for the {samples} samples of "
            f"{options.option} {options.path}"
        )
    return labels


class ImageFolder(Dataset):
    """A folder of images, streamed in shuffled batches by Keras's
    ``image_dataset_from_directory``: only the file list and a few batches are in memory. Images
    in one subfolder per class are labelled by their class."""

    def __init__(self, options: DataOptions, specs: Sequence[InputSpec] | None) -> None:

        where = f"{options.option} {options.path}"
        if options.image_size is None:
            raise UsageError(f"{where} is a folder: pass --image-size H W")
        if specs is None or len(specs) != 1:
            raise UsageError(f"{where}: image folders feed models with exactly one declared input")
        spec = specs[0]
        channels = spec.shape[-1] if len(spec.shape) == 4 else None
        modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
        if channels not in modes:
            raise UsageError(
                f"{where}: image folders feed models whose one input is (height, width, "
                f"1, 3 or 4 channels); this model's input is {spec.describe()}"
            )
        declared = spec.shape[1:3]
        if any(
            want is not None and want != got
            for want, got in zip(declared, options.image_size, strict=True)
        ):
            raise UsageError(
                f"--image-size {options.image_size[0]} {options.image_size[1]} does not fit "
                f"input {spec.describe()}"
            )
        self.source = options.path
        self.specs = [spec]
        self.integer_inputs = []  # decoded images are floats; --rescale scales them
        self.labelled = any(entry.is_dir() for entry in Path(options.path).iterdir())
        self._options = options
        self._mode = modes[channels]
        self.available = None

    def batches(
        self, batch_size: int, seed: int, samples: int | None, whole: bool = False
    ) -> Iterator[Batch]:
        dataset = self._dataset(batch_size, seed)
        served = 0
        for number, element in enumerate(dataset):
            images, labels = element if self.labelled else (element, None)
            size = int(images.shape[0])
            if samples is not None and served >= samples:
                return
            if whole and number > 0 and size < batch_size:
                return  # a short last batch, after full ones
            values = images.numpy()
            if self._options.rescale is not None:
                values = values * self._options.rescale
            served += size
            yield Batch(
                inputs=[values.astype(self.specs[0].dtype)],
                labels=None if labels is None else labels.numpy(),
            )

    def _dataset(self, batch_size: int, seed: int) -> Any:
        import keras

        options = self._options
        try:
            dataset = keras.utils.image_dataset_from_directory(
                options.path,
                labels="inferred" if self.labelled else None,
                label_mode="int" if self.labelled else None,
                color_mode=self._mode,
                batch_size=batch_size,
                image_size=options.image_size,
                shuffle=True,
                seed=seed,
                verbose=False,
            )
        except ValueError as exc:
            raise UsageError(
                f"{options.option} {options.path}: {' '.join(str(exc).split())}"
            ) from None
        self.available = len(dataset.file_paths)
        return dataset


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


def synthetic_batch(
    specs: Sequence[InputSpec], samples: int, seed: int, shapes: InputShapes
) -> Batch:
    """Standard-normal values in the shape of each input, for float inputs only."""
    check_shape_names(specs, shapes)
    rng = np.random.default_rng(seed)
    arrays = []
    for spec in specs:
        if not spec.is_float:
            raise UsageError(
                f"input {spec.describe()} takes {spec.dtype} values (e.g. token ids) that "
                "synthetic data cannot stand for: pass real data with --data"
            )
        dims = resolve_shape(spec, shapes, single=len(specs) == 1)
        arrays.append(rng.standard_normal((samples, *dims)).astype(spec.dtype))
    return Batch(arrays)


def check_shape_names(specs: Sequence[InputSpec], shapes: InputShapes) -> None:
    """Every ``--input-shape`` names an input of the model, or is the only input's: one that
    would otherwise be left unused is a mistake to say, not to pass over."""
    names = [spec.name for spec in specs]
    listed = ", ".join(repr(name) for name in names)
    for name, dims in shapes.items():
        given = ",".join(str(dim) for dim in dims)
        if name is None and len(specs) > 1:
            raise UsageError(
                f"--input-shape {given} names no input, and the model has {len(specs)} "
                f"({listed}): give NAME=D1,D2,... for each input it is for"
            )
        if name is not None and name not in names:
            raise UsageError(
                f"--input-shape {name}={given}: the model has no input named {name!r} "
                f"(its inputs: {listed})"
            )


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
        pattern = ",".join("D" if dim is None else str(dim) for dim in declared)
        raise UsageError(
            f"--input-shape {shown} does not fit input {spec.describe()}: it takes "
            f"{len(declared)} dimensions after the batch ({pattern})"
        )
    return given


def describe_synthetic(batch: Batch, specs: Sequence[InputSpec], seed: int) -> ProbeData:
    return ProbeData(
        real=False,
        source=f"standard normal, seed {seed}",
        samples=batch.size,
        inputs=tuple(
            (spec.name, tuple(array.shape)) for spec, array in zip(specs, batch.inputs, strict=True)
        ),
        batch_size=batch.size,
        batches=1,
    )
