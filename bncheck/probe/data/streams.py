"""Data that streams: TFRecord files (``--tfrecord``), the user's own dataset function
(``--dataset-fn``) and, through the Python API, a ``tf.data.Dataset`` or any iterable.

Every source is matched to the model's inputs the way an ``.npz`` file's arrays are (by input
name, or the only input whatever its name), and re-batched into batches of the size asked for:
a batch's statistics depend on its size, so the size is the one asked for, whatever batches the
source yields. Elements follow Keras's convention: a tuple ``(x, y)`` or ``(x, y, weights)``
carries labels (sample weights are ignored, as BatchNorm ignores them in training), anything
else is ``x`` alone; ``x`` is an array (one input), a dict by input name, or a list or tuple
by input position.

TFRecord files are read in a seeded shuffled order (see ``TFRecordData``); the other streams are
read in the order they give. Every problem with the data, including a record that cannot be
parsed halfway through, is a one-line ``UsageError`` naming the option.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from bncheck.errors import UsageError
from bncheck.probe.data.specs import INPUTS_KEY, Batch, Dataset, InputSpec, check_shape
from bncheck.probe.options import DatasetFunction, FeatureSpec, RecordOptions

#: Serialized records held by the shuffle of TFRecord files. A record is as large as its
#: features (224 x 224 x 3 float32 values: 600 kB), so this bounds memory to a few hundred MB.
RECORD_SHUFFLE = 1024
#: TFRecord files read at once, interleaved, so that the shuffle mixes several files.
FILES_AT_ONCE = 8
_RECORD_DTYPES = ("float32", "int64")


def parse_feature(text: str, option: str = "--feature") -> FeatureSpec:
    """``NAME:DTYPE[:D1,D2,...]`` -> a ``FeatureSpec`` (no dimensions: a scalar)."""
    name, _, rest = text.partition(":")
    dtype, _, dims_text = rest.partition(":")
    if not name or dtype not in _RECORD_DTYPES:
        raise UsageError(
            f"{option} {text!r}: expected NAME:DTYPE[:D1,D2,...] with DTYPE float32 or int64"
        )
    try:
        shape = tuple(int(part) for part in dims_text.split(",")) if dims_text else ()
    except ValueError:
        raise UsageError(f"{option} {text!r}: dimensions must be whole numbers") from None
    if any(dim <= 0 for dim in shape):
        raise UsageError(f"{option} {text!r}: dimensions must be positive")
    return FeatureSpec(name, dtype, shape)


def parse_records(
    pattern: str | None, features: Sequence[str], label: str | None
) -> RecordOptions | None:
    """The TFRecord options, or ``None`` without ``--tfrecord``."""
    if pattern is None:
        if features or label is not None:
            raise UsageError("--feature and --label describe --tfrecord files: pass --tfrecord")
        return None
    if not features:
        raise UsageError(
            f"--tfrecord {pattern}: declare the features to read, e.g. "
            "--feature image:float32:224,224,3 (one per model input)"
        )
    parsed = tuple(parse_feature(text) for text in features)
    names = [feature.name for feature in parsed]
    if len(set(names)) != len(names):
        raise UsageError(f"--feature names a feature twice: {', '.join(names)}")
    return RecordOptions(
        pattern, parsed, None if label is None else parse_feature(label, "--label")
    )


def parse_dataset_fn(text: str | None) -> DatasetFunction | None:
    """``FILE.py:NAME`` -> a ``DatasetFunction``."""
    if text is None:
        return None
    path, _, name = text.rpartition(":")
    if not path or not name.isidentifier():
        raise UsageError(f"--dataset-fn {text!r}: expected FILE.py:FUNCTION")
    return DatasetFunction(path, name)


class StreamData(Dataset):
    """A ``tf.data.Dataset`` or any iterable of batches (or of single samples), read in the
    order it gives and re-batched."""

    def __init__(
        self,
        data: Any,
        specs: Sequence[InputSpec] | None,
        where: str,
        again: Callable[[], Any] | None = None,
    ) -> None:
        """``where`` names the data in messages; ``again`` gives the data anew for a second
        pass when ``data`` is an iterator, which can be read once."""
        self.source = where
        self._data = data
        self._again = again
        self._passes = 0
        self._one_shot = False
        self._tensorflow = _is_tf_dataset(data)
        if self._tensorflow:
            self._init_tensorflow(data, specs)
        else:
            self._init_iterable(data, specs)

    def _init_tensorflow(self, data: Any, specs: Sequence[InputSpec] | None) -> None:
        import tensorflow as tf

        structure = data.element_spec
        for leaf in tf.nest.flatten(structure):
            if not isinstance(leaf, tf.TensorSpec):
                raise UsageError(
                    f"{self.source} yields {type(leaf).__name__} values: bncheck runs dense "
                    "tensors only"
                )
        inputs, labels = _parts(structure)
        self.specs = list(specs) if specs is not None else [_spec_like(inputs, self.source)]
        ordered = _in_input_order(inputs, self.specs, self.source)
        self._batched = _batched([leaf.shape.rank for leaf in ordered], self.specs, self.source)
        for leaf, spec in zip(ordered, self.specs, strict=True):
            if not (leaf.dtype.is_floating or leaf.dtype.is_integer):
                raise UsageError(f"{self.source}: the values for {spec.name!r} are not numeric")
            _check_dims(tuple(leaf.shape), spec, self._batched, self.source)
        self.labelled = labels is not None
        cardinality = int(data.cardinality())
        self._endless = cardinality == int(tf.data.INFINITE_CARDINALITY)
        self.available = cardinality if cardinality >= 0 and not self._batched else None
        self.integer_inputs = []  # streamed elements are typed by their source

    def _init_iterable(self, data: Any, specs: Sequence[InputSpec] | None) -> None:
        try:
            elements = iter(data)
        except TypeError:
            raise UsageError(
                f"{self.source} is a {type(data).__name__}: give arrays, (x, y) pairs, a "
                "tf.data.Dataset or an iterable of batches"
            ) from None
        if (
            isinstance(data, (tuple, list))
            and all(isinstance(item, np.ndarray) for item in data)
            and len({np.ndim(item) for item in data}) > 1
        ):
            shapes = " and ".join(str(item.shape) for item in data[:3])
            raise UsageError(
                f"{self.source} gives a {type(data).__name__} of arrays shaped {shapes}, read "
                "as batches one after another: for (x, y) arrays give zip(x, y) or "
                "tf.data.Dataset.from_tensor_slices((x, y))"
            )
        self._one_shot = elements is data
        first = next(elements, None)
        if first is None:
            raise UsageError(f"{self.source} holds no samples")
        if self._one_shot:
            self._data = _chain(first, elements)
        inputs, labels = _parts(first)
        self.specs = list(specs) if specs is not None else [_spec_like(inputs, self.source)]
        ordered = _in_input_order(inputs, self.specs, self.source)
        self._batched = _batched([np.ndim(leaf) for leaf in ordered], self.specs, self.source)
        self.labelled = labels is not None
        self._endless = False
        self.available = None
        self.integer_inputs = []  # streamed elements are typed by their source

    def batches(
        self, batch_size: int, seed: int, samples: int | None, whole: bool = False
    ) -> Iterator[Batch]:
        if self._endless and samples is None:
            raise UsageError(
                f"{self.source} repeats without end: say how many samples to use (--samples N, "
                "or samples=N)"
            )
        data = self._data
        if self._passes > 0 and not self._tensorflow and self._one_shot:
            if self._again is None:
                raise UsageError(
                    f"{self.source} is an iterator, which can be read only once, and "
                    "recalibrating reads the data twice (to estimate, then to verify): pass a "
                    "list, a tf.data.Dataset, or held-out data to verify on"
                )
            data = self._again()
        self._passes += 1
        if self._tensorflow:
            stream = self._tensorflow_batches(data, batch_size)
        else:
            stream = _rebatched(self._arranged(data), batch_size)
        yield from served(stream, batch_size, samples, whole)

    def _tensorflow_batches(self, data: Any, batch_size: int) -> Iterator[Batch]:
        import tensorflow as tf

        specs = self.specs

        def arrange(*parts: Any) -> Any:
            inputs, labels = _parts(parts[0] if len(parts) == 1 else parts)
            ordered = tuple(
                tf.cast(value, spec.dtype)
                for value, spec in zip(_in_input_order(inputs, specs, ""), specs, strict=True)
            )
            return ordered if labels is None else (ordered, labels)

        arranged = data.map(arrange, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        batched = arranged.rebatch(batch_size) if self._batched else arranged.batch(batch_size)
        yield from numpy_batches(batched.prefetch(tf.data.AUTOTUNE), self.labelled, self.source)

    def _arranged(self, data: Iterable[Any]) -> Iterator[tuple[list[np.ndarray], Any]]:
        for element in data:
            inputs, labels = _parts(element)
            if (labels is not None) != self.labelled:
                raise UsageError(f"{self.source}: some elements have labels and some do not")
            arrays = []
            for value, spec in zip(
                _in_input_order(inputs, self.specs, self.source), self.specs, strict=True
            ):
                array = np.asarray(value)
                if not self._batched:
                    array = array[None]
                check_shape(array, spec, self.source)
                arrays.append(np.asarray(array, dtype=spec.dtype))
            yield arrays, None if labels is None else _labels(labels, self._batched)


def _is_tf_dataset(data: Any) -> bool:
    """Whether ``data`` is a ``tf.data.Dataset``, without importing TensorFlow for data that
    cannot be one."""
    if "tensorflow" not in type(data).__module__:
        return False
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _parts(element: Any) -> tuple[Any, Any | None]:
    """``(inputs, labels)`` of one element, as Keras reads elements."""
    if isinstance(element, tuple) and 1 <= len(element) <= 3:
        return element[0], element[1] if len(element) > 1 else None
    return element, None


def _in_input_order(inputs: Any, specs: Sequence[InputSpec], where: str) -> list[Any]:
    """The values of ``inputs`` (a dict by name, a list or tuple by position, or one value)
    in the order of the model's inputs."""
    names = ", ".join(spec.name for spec in specs)
    if isinstance(inputs, Mapping):
        if len(specs) == 1 and len(inputs) == 1:
            return list(inputs.values())
        if len(specs) == 1 and INPUTS_KEY in inputs:
            return [inputs[INPUTS_KEY]]
        missing = [spec.name for spec in specs if spec.name not in inputs]
        if missing:
            held = ", ".join(str(key) for key in inputs)
            raise UsageError(f"{where} has no input named {missing[0]!r} (it holds {held})")
        return [inputs[spec.name] for spec in specs]
    if isinstance(inputs, (list, tuple)):
        if len(inputs) != len(specs):
            raise UsageError(
                f"{where} gives {len(inputs)} inputs and the model has {len(specs)} ({names})"
            )
        return list(inputs)
    if len(specs) != 1:
        raise UsageError(
            f"{where} gives one input and the model has {len(specs)} ({names}): give a dict by "
            "input name, or a tuple ((x1, x2, ...), y)"
        )
    return [inputs]


def _spec_like(inputs: Any, where: str) -> InputSpec:
    """A model that declares no inputs (subclassed) takes one input shaped like the data."""
    if isinstance(inputs, (Mapping, list, tuple)):
        raise UsageError(
            f"{where}: the model declares no inputs, so bncheck cannot match several of them; "
            "give one array per element"
        )
    if not hasattr(inputs, "dtype"):
        inputs = np.asarray(inputs)
    shape = tuple(inputs.shape)
    # A TensorSpec's dtype names its NumPy dtype; an array's is one.
    dtype = np.dtype(getattr(inputs.dtype, "as_numpy_dtype", inputs.dtype))
    return InputSpec("input", (None, *shape[1:]), "float32" if dtype.kind == "f" else dtype.name)


def _batched(ranks: Sequence[int | None], specs: Sequence[InputSpec], where: str) -> bool:
    """Whether the elements are batches (the inputs' rank) or single samples (one less)."""
    wanted = [len(spec.shape) for spec in specs]
    if list(ranks) == wanted:
        return True
    if list(ranks) == [rank - 1 for rank in wanted]:
        return False
    shown = ", ".join(spec.describe() for spec in specs)
    raise UsageError(
        f"{where} yields values of rank {', '.join(str(rank) for rank in ranks)}, which are "
        f"neither batches nor samples of the inputs {shown}"
    )


def _check_dims(shape: tuple[int | None, ...], spec: InputSpec, batched: bool, where: str) -> None:
    sample = shape[1:] if batched else shape
    if any(
        want is not None and got is not None and want != got
        for want, got in zip(spec.shape[1:], sample, strict=True)
    ):
        dims = ", ".join("None" if dim is None else str(dim) for dim in shape)
        raise UsageError(f"{where}: values of shape ({dims}) do not fit input {spec.describe()}")


def _labels(labels: Any, batched: bool) -> np.ndarray:
    values = np.asarray(labels)
    return values if batched else values[None]


def _rebatched(
    parts: Iterable[tuple[list[np.ndarray], np.ndarray | None]], batch_size: int
) -> Iterator[Batch]:
    """Batches of ``batch_size`` rows from chunks of any size, in order; the last may be
    short."""
    held: list[tuple[list[np.ndarray], np.ndarray | None]] = []
    rows = 0
    for inputs, labels in parts:
        held.append((inputs, labels))
        rows += len(inputs[0])
        while rows >= batch_size:
            batch, rest = _split(_joined(held), batch_size)
            yield batch
            held, rows = [(rest.inputs, rest.labels)], rest.size
    if rows:
        yield _joined(held)


def _joined(held: Sequence[tuple[list[np.ndarray], np.ndarray | None]]) -> Batch:
    if len(held) == 1:
        return Batch(*held[0])
    inputs = [np.concatenate(arrays) for arrays in zip(*(chunk for chunk, _ in held), strict=True)]
    labels = [chunk for _, chunk in held if chunk is not None]
    return Batch(inputs, np.concatenate(labels) if labels else None)


def _split(batch: Batch, rows: int) -> tuple[Batch, Batch]:
    labels = batch.labels
    return (
        Batch([array[:rows] for array in batch.inputs], None if labels is None else labels[:rows]),
        Batch([array[rows:] for array in batch.inputs], None if labels is None else labels[rows:]),
    )


def served(
    batches: Iterable[Batch], batch_size: int, samples: int | None, whole: bool
) -> Iterator[Batch]:
    """At most ``samples`` samples of ``batches`` (in order); with ``whole``, a short last batch
    after full ones is left out (see ``Dataset.batches``)."""
    done = 0
    for number, batch in enumerate(batches):
        if samples is not None:
            if done >= samples:
                return
            if batch.size > samples - done:
                batch = _split(batch, samples - done)[0]
        if whole and number > 0 and batch.size < batch_size:
            return
        done += batch.size
        yield batch


def numpy_batches(dataset: Any, labelled: bool, where: str) -> Iterator[Batch]:
    """A ``tf.data`` pipeline of ``inputs`` or ``(inputs, labels)`` batches as NumPy batches;
    a pipeline that fails (a record that cannot be parsed, a corrupt file) is a
    ``UsageError``."""
    import tensorflow as tf

    try:
        for element in dataset.as_numpy_iterator():
            inputs, labels = element if labelled else (element, None)
            yield Batch(list(inputs), labels)
    except tf.errors.OpError as exc:
        raise UsageError(f"{where}: {_first_line(exc.message)}") from None


#: Where in TensorFlow's runtime an error arose: noise around the reason a user can act on.
_RUNTIME_NOISE = re.compile(
    r"\{\{function_node [^}]*\}\}"
    r"|Error in user-defined function passed to \S+ transformation with iterator: \S+:"
    r"|\[\[\{\{node [^}]*\}\}\]\]"
    r"|\[Op:\w+\].*"
    r"|Name: <unknown>,"
)


def _first_line(message: str) -> str:
    """The reason of a TensorFlow error, on one line."""
    text = " ".join(_RUNTIME_NOISE.sub(" ", message).split()) or "failed"
    return text if len(text) <= 300 else text[:297] + "..."


class TFRecordData(Dataset):
    """``tf.train.Example`` records in TFRecord files, one declared feature per model input.

    The files are read in a shuffled order (seeded), ``FILES_AT_ONCE`` at a time interleaved,
    through a shuffle buffer of ``RECORD_SHUFFLE`` records, so that a batch mixes records from
    several files even when each file holds one class; then each batch is parsed at once
    (``tf.io.parse_example``) and cast to the inputs' dtypes, in parallel with the model's work.
    """

    def __init__(self, options: RecordOptions, specs: Sequence[InputSpec] | None) -> None:
        import tensorflow as tf

        self.source = options.pattern
        self._where = f"--tfrecord {options.pattern}"
        try:
            files = sorted(tf.io.gfile.glob(options.pattern))
        except tf.errors.OpError as exc:
            raise UsageError(f"{self._where}: {_first_line(exc.message)}") from None
        if not files:
            raise UsageError(f"{self._where}: no file matches")
        self._files = files
        self._options = options
        if specs is None:
            if len(options.features) != 1:
                raise UsageError(
                    f"{self._where}: the model declares no inputs, so bncheck cannot match "
                    "several features to them; declare one --feature"
                )
            feature = options.features[0]
            specs = [InputSpec("input", (None, *feature.shape), feature.dtype)]
        self.specs = list(specs)
        self._features = self._matched(options.features)
        self.labelled = options.label is not None
        self.available = None
        self.integer_inputs = []  # streamed elements are typed by their source

    def _matched(self, features: Sequence[FeatureSpec]) -> list[FeatureSpec]:
        """One feature per input, in input order: by name, or the only one."""
        by_name = {feature.name: feature for feature in features}
        declared = ", ".join(by_name)
        matched = []
        for spec in self.specs:
            if spec.name in by_name:
                feature = by_name[spec.name]
            elif len(self.specs) == 1 and len(features) == 1:
                feature = features[0]
            else:
                raise UsageError(
                    f"{self._where}: no --feature for input {spec.describe()} (declared: "
                    f"{declared}); name one feature per input"
                )
            if len(feature.shape) != len(spec.shape) - 1:
                raise UsageError(
                    f"--feature {feature.name} has {len(feature.shape)} dimensions; input "
                    f"{spec.describe()} takes {len(spec.shape) - 1} per sample"
                )
            _check_dims((None, *feature.shape), spec, True, f"--feature {feature.name}")
            matched.append(feature)
        unused = sorted(set(by_name) - {feature.name for feature in matched})
        if unused:
            raise UsageError(
                f"--feature {unused[0]} feeds no input of the model "
                f"({', '.join(spec.name for spec in self.specs)})"
            )
        return matched

    def batches(
        self, batch_size: int, seed: int, samples: int | None, whole: bool = False
    ) -> Iterator[Batch]:
        yield from served(
            numpy_batches(self._dataset(batch_size, seed), self.labelled, self._where),
            batch_size,
            samples,
            whole,
        )

    def _dataset(self, batch_size: int, seed: int) -> Any:
        import tensorflow as tf

        wanted = {
            feature.name: tf.io.FixedLenFeature(feature.shape, feature.dtype)
            for feature in [*self._features, *filter(None, [self._options.label])]
        }
        features, specs, label = self._features, self.specs, self._options.label

        def parse(serialized: Any) -> Any:
            parsed = tf.io.parse_example(serialized, wanted)
            inputs = tuple(
                tf.cast(parsed[feature.name], spec.dtype)
                for feature, spec in zip(features, specs, strict=True)
            )
            return inputs if label is None else (inputs, parsed[label.name])

        files = tf.data.Dataset.from_tensor_slices(self._files).shuffle(len(self._files), seed=seed)
        records = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=min(len(self._files), FILES_AT_ONCE),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        return (
            records.shuffle(RECORD_SHUFFLE, seed=seed)
            .batch(batch_size)
            .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE)
        )


def call_dataset_fn(function: DatasetFunction) -> tuple[Any, Callable[[], Any]]:
    """Run the user's ``--dataset-fn`` file (their own code, trusted explicitly like
    ``--custom-objects``; the model file never is) and call its function: what it returns, and
    a way to call it again (for a second pass over an iterator)."""
    from bncheck.probe.foreign import describe_error, raised_in, run_user_file

    where = f"--dataset-fn {function.describe()}"
    make = getattr(run_user_file(function.path, "--dataset-fn"), function.name, None)
    if not callable(make):
        raise UsageError(f"{where}: {function.path} defines no function {function.name!r}")

    def call() -> Any:
        try:
            return make()
        except Exception as exc:  # the user's code may fail in any way: one line
            place = raised_in(exc, function.path)
            raise UsageError(f"{where} failed ({describe_error(exc)}{place})") from None

    return call(), call
