"""A TensorFlow-free description of a model's BatchNormalization layers.

Readers build these objects from files; rules judge them; reporters render them. Nothing here
imports TensorFlow or Keras.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import field, replace
from functools import cached_property
from typing import Any

import numpy as np

from bncheck.records import record

#: The four arrays of a BatchNormalization layer, in the order Keras creates them.
ARRAY_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


@record
class Vocabulary:
    """How one framework names a BatchNorm layer's arrays, modes and momentum, for messages and
    ``bncheck explain``. bncheck's own names (the JSON keys among them) are Keras's; a report
    speaks to each model in the words of the framework that wrote it."""

    framework: str
    """Who speaks this way, as a user names it: ``Keras``, ``PyTorch``, ``ONNX``."""
    arrays: Mapping[str, str]
    """bncheck's array name (``moving_mean``, ``moving_variance``, ``gamma``, ``beta``) -> the
    framework's."""
    statistics: str
    """The stored statistics as a whole: ``moving statistics``, ``running statistics``."""
    training_call: str
    """How a user runs the layers with batch statistics: ``training=True``, ``model.train()``."""
    inference_mode: str
    """The mode that normalises with the stored statistics: ``inference mode``, ``eval mode``."""
    inference_call: str
    """How a user asks for that mode: ``training=False``, ``model.eval()``."""
    fit: str
    """What trains a model: ``model.fit``, ``the training loop``."""
    momentum_keeps_history: bool
    """True when momentum is the weight the old statistics keep (Keras, ONNX); False when it is
    the weight of each new batch (PyTorch, whose 0.1 is Keras's 0.9)."""

    def array(self, name: str) -> str:
        """The framework's name of one of bncheck's arrays."""
        return self.arrays.get(name, name)

    def momentum(self, keras_momentum: float) -> float:
        """A momentum given in Keras's convention, in this framework's."""
        return keras_momentum if self.momentum_keeps_history else 1.0 - keras_momentum

    @property
    def momentum_meaning(self) -> str:
        if self.momentum_keeps_history:
            return "the weight the old statistics keep at each update"
        return "the weight of each new batch at each update (1 - Keras's momentum)"

    def translate(self, text: str) -> str:
        """Text written in Keras's words (a rule's documentation), in this framework's: array
        names, statistics, modes and training calls. Keras's own text comes back unchanged."""
        if self is KERAS_WORDS:
            return text
        for pattern, replacement in self._phrases():
            text = pattern.sub(replacement, text)
        return text

    def _phrases(self) -> list[tuple[re.Pattern[str], str]]:
        phrases = [
            (r"``model\(x, training=True\)``", f"``{self.training_call}``"),
            (r"``model\.fit``|``fit\(\)``|``fit``", self.fit),
            (r"\bmodel\.fit\b|\bfit\(\)", self.fit),
            (r"``training=True``", f"``{self.training_call}``"),
            # Not inside a call such as ``bn(x, training=True)``, which stays Keras code.
            (r"(?<!, )(?<!\()\btraining=True\b", self.training_call),
            (r"\bmoving statistics\b", self.statistics),
            (r"\bmoving mean\b", self.statistics.replace("statistics", "mean")),
            (r"\bmoving variance\b", self.statistics.replace("statistics", "variance")),
            (r"\binference mode\b", self.inference_mode),
        ]
        phrases += [(rf"\b{name}\b", own) for name, own in self.arrays.items() if name != own]
        return [(re.compile(pattern), replacement) for pattern, replacement in phrases]


#: The framework whose words each format speaks, where its layers do not say.
FORMAT_FRAMEWORKS: Mapping[str, str] = {
    "pytorch": "pytorch",
    "torchscript": "pytorch",
    "onnx": "onnx",
}

KERAS_WORDS = Vocabulary(
    framework="Keras",
    arrays={name: name for name in ARRAY_NAMES},
    statistics="moving statistics",
    training_call="training=True",
    inference_mode="inference mode",
    inference_call="training=False",
    fit="model.fit",
    momentum_keeps_history=True,
)
PYTORCH_WORDS = Vocabulary(
    framework="PyTorch",
    arrays={
        "gamma": "weight",
        "beta": "bias",
        "moving_mean": "running_mean",
        "moving_variance": "running_var",
    },
    statistics="running statistics",
    training_call="model.train()",
    inference_mode="eval mode",
    inference_call="model.eval()",
    fit="the training loop",
    momentum_keeps_history=False,
)
#: ONNX's own words, for graphs other producers wrote: the ``BatchNormalization`` operator's
#: inputs, and its ``training_mode`` attribute; its ``momentum`` keeps Keras's convention.
ONNX_WORDS = Vocabulary(
    framework="ONNX",
    arrays={
        "gamma": "scale",
        "beta": "B",
        "moving_mean": "input_mean",
        "moving_variance": "input_var",
    },
    statistics="stored statistics (input_mean, input_var)",
    training_call="training_mode=1",
    inference_mode="inference mode (training_mode=0)",
    inference_call="training_mode=0",
    fit="training",
    momentum_keeps_history=True,
)
#: One vocabulary per framework, by the name ``BNLayer.framework`` and ``explain --framework``
#: use. TensorFlow checkpoints and SavedModels speak Keras's words, as TensorFlow's own layers do.
VOCABULARIES: Mapping[str, Vocabulary] = {
    "keras": KERAS_WORDS,
    "tensorflow": KERAS_WORDS,
    "pytorch": PYTORCH_WORDS,
    "onnx": ONNX_WORDS,
}


@record
class InitialValues:
    """The constant each array starts from, from the layer's configured initializers.

    ``None`` means the initializer is not a constant (e.g. ``RandomNormal``), so bncheck cannot
    tell whether the array moved away from it.
    """

    gamma: float | None = 1.0
    """``gamma_initializer``; Keras default ``Ones``."""
    beta: float | None = 0.0
    """``beta_initializer``; Keras default ``Zeros``."""
    moving_mean: float | None = 0.0
    """``moving_mean_initializer``; Keras default ``Zeros``."""
    moving_variance: float | None = 1.0
    """``moving_variance_initializer``; Keras default ``Ones``."""
    assumed: bool = False
    """True when the file has no configuration and the Keras defaults were assumed."""

    def of(self, array_name: str) -> float | None:
        value: float | None = getattr(self, array_name)
        return value


@record
class ArraySummary:
    """Summary statistics of one array, over its finite values."""

    min: float | None
    """Smallest finite value; ``None`` when no value is finite."""
    max: float | None
    """Largest finite value; ``None`` when no value is finite."""
    mean: float | None
    """Mean of the finite values; ``None`` when no value is finite."""
    nonfinite: int
    """How many values are NaN or infinite."""

    @classmethod
    def of(cls, array: np.ndarray) -> ArraySummary:
        values = np.asarray(array, dtype=np.float64).ravel()
        finite = values[np.isfinite(values)]
        nonfinite = int(values.size - finite.size)
        if finite.size == 0:
            return cls(None, None, None, nonfinite)
        return cls(float(finite.min()), float(finite.max()), float(finite.mean()), nonfinite)


@record
class BNLayer:
    """One BatchNormalization layer as saved in a model file.

    Configuration fields are ``None`` when the file does not record them (weights-only files
    and checkpoints carry arrays but no configuration).
    """

    path: str
    """Nested path from the outermost model, '/'-separated, e.g.
    ``sequential/mobilenetv2_1.00_96/bn_Conv1``."""
    name: str
    """The layer's own name (last element of ``path``)."""
    class_name: str
    """Keras class name, e.g. ``BatchNormalization`` or ``SyncBatchNormalization``; for layers
    found by their variables only, a description of how they were recognised."""
    moving_mean: np.ndarray
    """Per-channel moving mean used at inference."""
    moving_variance: np.ndarray
    """Per-channel moving variance used at inference."""
    gamma: np.ndarray | None = None
    """Scale; ``None`` when the layer has ``scale=False`` (or it is unknown)."""
    beta: np.ndarray | None = None
    """Offset; ``None`` when the layer has ``center=False`` (or it is unknown)."""
    axis: tuple[int, ...] | None = None
    """Normalised axis or axes."""
    momentum: float | None = None
    """Keras momentum: the weight kept by the old moving statistics at each update."""
    epsilon: float | None = None
    """Added to the variance before taking its square root."""
    center: bool | None = None
    """Whether the layer has ``beta``."""
    scale: bool | None = None
    """Whether the layer has ``gamma``."""
    trainable: bool | None = None
    """Effective trainable flag: the layer's own and every enclosing model's."""
    synchronized: bool = False
    """Cross-replica statistics (``synchronized=True`` or ``SyncBatchNormalization``)."""
    initial: InitialValues = field(default_factory=InitialValues)
    """The configured initial value of each array."""
    call_kwargs: tuple[Mapping[str, Any], ...] = ()
    """Keyword arguments of each recorded call of the layer in the saved graph."""
    source: str = ""
    """Where the arrays were found in the file (group or variable names)."""
    locations: Mapping[str, str] = field(default_factory=dict)
    """The HDF5 dataset holding each array, by array name: a path inside the ``.h5`` file, or
    inside the ``model.weights.h5`` member of a ``.keras`` archive. Empty when unknown."""
    framework: str = "keras"
    """Whose conventions the fields follow: ``keras``, ``pytorch`` or ``onnx``. ``momentum`` is
    the weight the old statistics keep at each update for ``keras`` and ``onnx``, and the weight
    of each new batch for ``pytorch`` (its default 0.1 is Keras's 0.9)."""
    num_batches_tracked: int | None = None
    """PyTorch's count of the batches the running statistics were updated with; ``None`` when the
    file has none (other frameworks, FrozenBatchNorm layers, checkpoints before PyTorch 0.4.1)."""
    variance_estimator: str | None = None
    """How ``moving_variance`` averages each batch's variance: ``unbiased`` (divided by n - 1,
    PyTorch's ``running_var``) or ``biased`` (divided by n, Keras 3); ``None`` when unknown."""
    words: str | None = None
    """Whose words messages about the layer use, when not ``framework``'s: ``pytorch`` for a
    graph PyTorch exported to ONNX."""

    @property
    def vocabulary(self) -> Vocabulary:
        """The words messages about this layer use (see ``VOCABULARIES``)."""
        return VOCABULARIES.get(self.words or self.framework, KERAS_WORDS)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], **fields: Any) -> BNLayer:
        """A layer from its arrays by name: the moving statistics, and gamma and beta where the
        layer has them. ``fields`` are the other fields."""
        return cls(
            moving_mean=arrays["moving_mean"],
            moving_variance=arrays["moving_variance"],
            gamma=arrays.get("gamma"),
            beta=arrays.get("beta"),
            **fields,
        )

    @classmethod
    def without_config(cls, arrays: Mapping[str, np.ndarray], **fields: Any) -> BNLayer:
        """A layer found by its variables alone: ``center`` and ``scale`` follow from the arrays
        present, and the Keras default initial values are assumed."""
        return cls.from_arrays(
            arrays,
            center="beta" in arrays,
            scale="gamma" in arrays,
            initial=InitialValues(assumed=True),
            **fields,
        )

    def configured_as(self, other: BNLayer) -> BNLayer:
        """This layer's stored arrays in ``other``'s place and with its configuration (name,
        class, axis, momentum, epsilon, flags, initial values, calls): a weights-only file's
        layer as the architecture it loads into describes it."""
        return replace(
            self,
            **{name: getattr(other, name) for name in CONFIGURATION_FIELDS},
        )

    @property
    def keras_momentum(self) -> float | None:
        """``momentum`` in Keras's convention (the weight the old statistics keep), whatever the
        framework; ``None`` when unknown."""
        if self.momentum is None:
            return None
        return 1.0 - self.momentum if self.framework == "pytorch" else self.momentum

    @property
    def channels(self) -> int:
        return int(np.asarray(self.moving_mean).size)

    def array(self, array_name: str) -> np.ndarray | None:
        value: np.ndarray | None = getattr(self, array_name)
        return value

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays the layer has, by name, in Keras creation order."""
        present = {}
        for array_name in ARRAY_NAMES:
            value = self.array(array_name)
            if value is not None:
                present[array_name] = value
        return present

    @cached_property
    def summaries(self) -> Mapping[str, ArraySummary | None]:
        """Summary of each of the four arrays; ``None`` for an array the layer does not have.
        Arrays of one length, all finite (a healthy layer's), are summarised together, one pass
        of each reduction over all of them: the same values as one by one, in fewer calls."""
        out: dict[str, ArraySummary | None] = dict.fromkeys(ARRAY_NAMES)
        present = {
            name: np.asarray(value, dtype=np.float64).ravel()
            for name, value in self.arrays().items()
        }
        if len({values.size for values in present.values()}) == 1:
            together = np.stack(list(present.values()))
            if together.size and np.isfinite(together).all():
                lows, highs, means = together.min(1), together.max(1), together.mean(1)
                for row, name in enumerate(present):
                    out[name] = ArraySummary(
                        float(lows[row]), float(highs[row]), float(means[row]), 0
                    )
                return out
        for name, values in present.items():
            out[name] = ArraySummary.of(values)
        return out


@record
class BatchMoments:
    """A batch normalisation a TensorFlow graph computes op by op: the batch moments of a 4-D
    or 5-D input (``Mean``, ``SquaredDifference``, ``Mean``), as ``tf.nn.moments`` makes them."""

    function: str
    """The graph function holding it, as a user would name it (``the call of layer bn``);
    empty for the graph's top level (a TF1 ``.meta``)."""
    scope: str
    """The name scope of the moments, e.g. ``bn1`` for ``bn1/moments/variance``."""
    axes: tuple[int, ...]
    """The axes reduced: the batch axis and every spatial one."""

    @property
    def where(self) -> str:
        if not self.function:
            return self.scope or "(top level)"
        return f"{self.scope} in {self.function}" if self.scope else self.function


@record
class IncompleteLayer:
    """A BatchNorm layer the file describes but whose arrays are not all there.

    Readers record it and move on; the ``file`` rules judge it. It is not in
    ``ModelDescription.layers``, whose layers always have both moving statistics.
    """

    path: str
    """The layer's nested path, as for ``BNLayer.path``."""
    present: tuple[str, ...]
    """The arrays the file holds for the layer, in Keras creation order."""
    missing: tuple[str, ...]
    """The arrays the layer has (by its configuration, or as BatchNorm) that the file lacks."""
    source: str
    """Where the layer's arrays were looked for."""


@record
class BatchStatisticsLayer:
    """A BatchNorm layer that keeps no running statistics (PyTorch's
    ``track_running_stats=False``, or an ONNX node fed the batch's own mean and variance): it
    normalises every batch with that batch's statistics, in inference too.

    Readers record it; the ``model`` rule BN022 judges it. It is not in
    ``ModelDescription.layers``, whose layers always have both stored statistics.
    """

    path: str
    """The layer's module path (``features.1``), or the ONNX node's name."""
    class_name: str
    """``BatchNorm2d``, ``BatchNormalization``, ..."""
    framework: str
    """``pytorch`` or ``onnx``, as for ``BNLayer.framework``."""
    evidence: str
    """What in the file shows it, for the finding: e.g. ``track_running_stats=False``."""
    channels: int | None = None
    """Channel count, from ``weight`` or ``num_features``; ``None`` when the file does not say."""
    words: str | None = None
    """As ``BNLayer.words``."""

    @property
    def vocabulary(self) -> Vocabulary:
        return VOCABULARIES.get(self.words or self.framework, KERAS_WORDS)


@record
class ModelDescription:
    """Everything bncheck knows about a model file without running it."""

    path: str
    """The file or directory as given by the user."""
    format: str
    """One of ``keras``, ``h5``, ``weights-h5``, ``savedmodel``, ``checkpoint``, ``pytorch``,
    ``torchscript``, ``safetensors``, ``onnx``; ``live`` for a model checked in memory
    (``bncheck.check_model``)."""
    layers: tuple[BNLayer, ...]
    """Every BatchNormalization layer found, in model order."""
    notes: tuple[str, ...] = ()
    """Facts about the reading a user should know, e.g. that defaults were assumed."""
    checkpoint: CheckpointContents | None = None
    """For checkpoints and SavedModels: every BatchNorm variable group found, complete or not
    (``layers`` holds only those whose moving statistics could be read); ``None`` otherwise."""
    incomplete: tuple[IncompleteLayer, ...] = ()
    """For model and weights files: BatchNorm layers whose arrays the file lacks in part."""
    batch_moments: tuple[BatchMoments, ...] = ()
    """For TF1 checkpoints with their ``.meta`` graph and SavedModels: batch normalisation the
    graph computes op by op rather than with the fused kernel."""
    pickled_calls: tuple[PickledCall, ...] = ()
    """For PyTorch pickles: the calls ``torch.load`` (without ``weights_only``) would make
    beyond rebuilding tensors and plain data. bncheck made none of them."""
    batch_statistics: tuple[BatchStatisticsLayer, ...] = ()
    """For PyTorch files and ONNX graphs: BatchNorm layers that keep no running statistics and
    normalise with each batch's own, at inference too."""

    @property
    def vocabulary(self) -> Vocabulary:
        """The words a report about this model uses: its layers' framework's, else its
        format's."""
        if self.layers:
            return self.layers[0].vocabulary
        if self.batch_statistics:
            return self.batch_statistics[0].vocabulary
        return VOCABULARIES.get(FORMAT_FRAMEWORKS.get(self.format, "keras"), KERAS_WORDS)

    @property
    def layer_count(self) -> int:
        """BatchNorm layers found: for a checkpoint or SavedModel every group of BatchNorm
        variables (or, with ``--model``, every layer of the model), complete or not; otherwise
        the layers read, those the file holds in part, and those that keep no statistics."""
        if self.checkpoint is not None:
            return self.checkpoint.coverage.bn_layers
        return len(self.layers) + len(self.incomplete) + len(self.batch_statistics)


def with_loaded_settings(
    description: ModelDescription, loaded: Mapping[str, tuple[float, float]]
) -> ModelDescription:
    """``description`` with the Keras ``(momentum, epsilon)`` of a loaded model, by layer path,
    where the file records none (a BatchNorm that a custom layer creates is in no
    configuration); ``description`` itself when there is nothing to fill."""
    filled = [
        replace(layer, momentum=loaded[layer.path][0], epsilon=loaded[layer.path][1])
        if layer.momentum is None and layer.framework == "keras" and layer.path in loaded
        else layer
        for layer in description.layers
    ]
    count = sum(new is not old for new, old in zip(filled, description.layers, strict=True))
    if not count:
        return description
    note = (
        f"momentum and epsilon of {count} BatchNorm layer(s) no configuration describes "
        "come from the loaded model"
    )
    return replace(description, layers=tuple(filled), notes=(*description.notes, note))


@record
class PickledCall:
    """A call a pickle asks for when it is loaded; bncheck never makes it."""

    target: str
    """What is called, e.g. ``posix.system``."""
    arguments: str
    """The arguments, shortened and escaped for a report."""
    where: str
    """Where the pickle asks for it, e.g. ``archive/data.pkl, byte 1234``."""


#: The fields of a ``BNLayer`` that its configuration decides, not its stored arrays.
CONFIGURATION_FIELDS = (
    "path",
    "name",
    "class_name",
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "trainable",
    "synchronized",
    "initial",
    "call_kwargs",
)

#: The class of a layer recognised by its variables' names alone (TF1 scopes, weights-only files).
INFERRED_BY_NAMES = "BatchNormalization (by variable names)"

#: The arrays without which a restored BatchNorm layer normalises with its initial statistics.
MOVING_STATS = ("moving_mean", "moving_variance")


@record
class CheckpointGroup:
    """The BatchNorm variables one layer left in a checkpoint, found by their names or owner."""

    path: str
    """The layer's path (``cnn/inner/bn``) or variable scope (``conv1/BatchNorm``)."""
    keys: Mapping[str, str]
    """Array name (``gamma``, ``beta``, ``moving_mean``, ``moving_variance``) -> checkpoint key,
    for the arrays present."""
    shapes: Mapping[str, tuple[int, ...]]
    """Array name -> the shape the checkpoint records, for the arrays present."""
    found_by: str
    """How the group was recognised: ``keras metadata``, ``variable names``, ``object graph`` or
    ``name scope``."""
    aliases: tuple[str, ...] = ()
    """Other scopes the same variables go by (e.g. the object-graph path
    ``model/layer_with_weights-1`` of the layer named ``bn1``)."""

    @property
    def missing_moving_stats(self) -> tuple[str, ...]:
        return tuple(name for name in MOVING_STATS if name not in self.keys)

    @property
    def names(self) -> tuple[str, ...]:
        """``path`` and then every alias."""
        return (self.path, *self.aliases)


@record
class LayerMatch:
    """Where a model's BatchNorm layer finds its variables in a checkpoint."""

    layer: str
    """Path of the model's layer."""
    channels: int
    """The layer's channel count in the model."""
    group: CheckpointGroup | None
    """The checkpoint's variables for the layer; ``None`` when nothing matches."""
    matched_by: str | None
    """``layer path``, ``layer name`` or ``position`` (the n-th unmatched layer takes the n-th
    unmatched group); ``None`` when nothing matches."""

    @property
    def shape_mismatches(self) -> dict[str, tuple[int, ...]]:
        """Arrays whose checkpoint shape does not hold one value per channel of the layer."""
        if self.group is None:
            return {}
        return {
            name: shape
            for name, shape in self.group.shapes.items()
            if int(np.prod(shape)) != self.channels
        }

    @property
    def restores_moving_stats(self) -> bool:
        return (
            self.group is not None
            and not self.group.missing_moving_stats
            and not any(name in MOVING_STATS for name in self.shape_mismatches)
        )


@record
class Coverage:
    """How many BatchNorm layers a checkpoint restores completely."""

    bn_layers: int
    """BatchNorm layers considered: the model's (with ``--model``) or the checkpoint's groups."""
    with_moving_stats: int
    """Of those, how many have both moving statistics (of the right shape) in the checkpoint."""


@record
class CheckpointContents:
    """The BatchNorm side of a checkpoint (or a SavedModel's variables): the subject of the
    ``checkpoint`` rules."""

    prefix: str
    """The checkpoint prefix read, e.g. ``run7/model.ckpt-300``."""
    groups: tuple[CheckpointGroup, ...]
    """Every group of BatchNorm variables, complete or not, in checkpoint order."""
    model: str | None = None
    """The model given with ``--model``; ``None`` without one."""
    matches: tuple[LayerMatch, ...] = ()
    """With ``--model``: one entry per BatchNorm layer of the model, in model order."""

    @property
    def coverage(self) -> Coverage:
        if self.model is not None:
            restored = sum(1 for match in self.matches if match.restores_moving_stats)
            return Coverage(len(self.matches), restored)
        complete = sum(1 for group in self.groups if not group.missing_moving_stats)
        return Coverage(len(self.groups), complete)

    @property
    def matched_groups(self) -> frozenset[str]:
        """Paths of the groups some model layer was matched to."""
        return frozenset(m.group.path for m in self.matches if m.group is not None)
