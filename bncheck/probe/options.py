"""How to probe: the options of ``--probe``/``--data``, importable without the probe itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field

from bncheck.records import record

#: Reports a probe step ("loading", "inference pass", ...) to whoever shows progress.
StepReporter = Callable[[str], None]

#: ``--probe-timeout``: a probe of a real model on real data (load, four passes over 2048
#: samples) takes seconds to a few minutes on a CPU; a graph that loops forever ends here.
DEFAULT_TIMEOUT = 600.0

#: ``--probe-memory``, resident memory of the probe's process in MiB: TensorFlow and Keras take
#: about 600 MiB before any model, a MobileNetV2 probed at 224x224 peaks at 2.1 GiB, and real
#: data adds its decoded samples (2048 images of 224x224x3 are 1.2 GiB); a bomb (a huge Fill, a
#: Dense of 10^8 units) stops here, below the 16 GiB of a CI runner.
DEFAULT_MEMORY_MIB = 8192

#: Samples the probe runs by default: enough that population statistics and prediction changes
#: are estimated to a few percent, few enough to take seconds on small models.
DEFAULT_SAMPLES = 2048


@record
class FeatureSpec:
    """One feature of the ``tf.train.Example`` records in TFRecord files: ``--feature
    image:float32:224,224,3`` or ``--label class:int64``."""

    name: str
    dtype: str
    """``float32`` or ``int64``: the two numeric kinds a ``tf.train.Example`` stores."""
    shape: tuple[int, ...]
    """Dimensions of one sample's value, without the batch; ``()`` for a scalar."""


@record
class RecordOptions:
    """TFRecord files of ``tf.train.Example`` records: ``--tfrecord``, ``--feature``,
    ``--label``."""

    pattern: str
    """File pattern such as ``data-*.tfrecord`` (TensorFlow's glob, so ``gs://`` works too)."""
    features: tuple[FeatureSpec, ...]
    """One feature per model input, matched to the inputs by name."""
    label: FeatureSpec | None = None


@record
class DatasetFunction:
    """``--dataset-fn FILE.py:NAME``: the user's own function that returns a dataset."""

    path: str
    name: str

    def describe(self) -> str:
        return f"{self.path}:{self.name}"


@record
class ProbeOptions:
    """How to probe, from ``--probe``, ``--data`` and friends."""

    data: str | None = None
    """``.npy``/``.npz`` file or image folder with real inputs; ``None`` for a synthetic batch."""
    labels: str | None = None
    """``--labels``: a ``.npy`` file of labels for ``data``."""
    samples: int = DEFAULT_SAMPLES
    """At most this many samples of ``data`` are run, in batches of ``batch_size``."""
    batch_size: int = 32
    seed: int = 0
    """Shuffles ``data`` into batches, or draws the synthetic batch."""
    image_size: tuple[int, int] | None = None
    """Height and width images are resized to (image folders only)."""
    rescale: float | None = None
    """Factor applied to image pixel values (image folders only)."""
    input_shapes: Mapping[str | None, tuple[int, ...]] = field(default_factory=dict)
    """``--input-shape`` values by input name (``None``: the only input)."""
    unsafe: bool = False
    """Load and run models that hold code (Lambda layers, foreign functions, unsafe ops)."""
    custom_objects: str | None = None
    architecture: str | None = None
    """``--architecture``: the .keras or .h5 file whose architecture a weights-only file's
    weights are loaded into to run them."""
    """A Python file defining the user's own custom layers, trusted explicitly."""
    records: RecordOptions | None = None
    """TFRecord files to run instead of ``data``."""
    dataset_fn: DatasetFunction | None = None
    """The user's function returning a dataset to run instead of ``data``."""
    timeout: float | None = DEFAULT_TIMEOUT
    """``--probe-timeout``: seconds the whole probe of one model may take; ``None``: no limit."""
    memory_mib: int | None = DEFAULT_MEMORY_MIB
    """``--probe-memory``: resident memory the probe's process may use; ``None``: no limit."""
    labels_needed_by: str | None = None
    """The option that measures a metric (``--fail-under``): data without labels cannot be
    measured against it, a usage error."""
