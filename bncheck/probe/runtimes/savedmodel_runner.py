"""Running a SavedModel's serving function with TensorFlow, BatchNorm op by BatchNorm op.

A SavedModel exported for serving (Keras 3's ``model.export``, tf-keras's ``model.save(DIR)``,
``tf.saved_model.save``) has no training mode to switch to, so the runner builds one from its
``serving_default`` signature, the function TensorFlow Serving runs. Its graph is frozen
(``convert_variables_to_constants_v2``: every nested function inlined, every variable read
becomes its value), and each BatchNorm op in it is found by the variables it reads:

- ``FusedBatchNorm``, ``FusedBatchNormV2`` or ``FusedBatchNormV3`` with ``is_training`` false
  (tf-keras, for inputs of rank 4 or 5), its mean and variance inputs reading the layer's
  ``moving_mean`` and ``moving_variance``;
- the multiply-add ``tf.nn.batch_normalization`` computes (Keras 3, and tf-keras for other
  ranks): ``inv = rsqrt(moving_variance + epsilon) [* gamma]``, ``x * inv + (beta -
  moving_mean * inv)``, the ``AddV2`` reading ``moving_variance`` and the ``Mul`` reading
  ``moving_mean`` found, and the ``Mul`` by ``inv`` that is not the mean's giving the input
  ``x``.

The layers' variables are those bncheck's static reader finds for them (``read_model``: each
layer's checkpoint keys, resolved through the restored objects to the variables the function
captures), so each op carries the layer path the static report gives. Three modes:

- ``stored``: the signature itself, called as TensorFlow serves it (its outputs are TensorFlow's
  own, bit for bit); the first batch also runs the frozen graph fetching each op's input and
  output, for the layers' figures;
- ``training``: a copy of the frozen graph in which each op's mean and variance inputs are its
  input's batch mean and biased variance over every axis but the channels (what Keras's
  training mode normalises with), every other op as it was, each op's moments fetched;
- ``estimated``: the signature called with the chosen layers' ``moving_mean`` and
  ``moving_variance`` variables assigned the estimates (in their own type), then put back: the
  model ``bncheck recalibrate`` writes, run as TensorFlow will serve it.

TensorFlow is imported inside the functions: the static path never imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import ModelDescription
from bncheck.probe.data import InputSpec
from bncheck.probe.foreign import describe_error
from bncheck.probe.runtime import (
    ESTIMATED,
    STORED,
    TRAINING,
    CallFigures,
    LayerInfo,
    Moments,
    PassResult,
    Statistics,
    figures_of,
)
from bncheck.probe.runtimes import savedmodel

SIGNATURE = "serving_default"
NOTE = (
    "a SavedModel has no training mode: its serving signature's BatchNorm ops are tapped, and "
    "the batch-statistics pass normalises with each op's batch statistics, every other op "
    "as served"
)
FUSED_OPS = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})
#: Ops a variable's value passes through on its way to a BatchNorm op.
_PASS_THROUGH = frozenset({"Identity", "Cast", "Reshape", "ReadVariableOp", "Squeeze"})
_ADDS = frozenset({"AddV2", "Add"})
#: Prefix of every node bncheck adds to the graph.
_OWN = "bncheck"
_STATISTICS = ("moving_mean", "moving_variance")


@dataclass
class BatchNormOp:
    """One BatchNorm op of the frozen serving graph."""

    path: str
    x: str
    """Its input, as a tensor name of the frozen graph."""
    output: str | None
    """Its output, where it was found."""
    mean_use: tuple[str, int]
    """The node and input position that read the moving mean."""
    variance_use: tuple[str, int]
    epsilon: float
    channel_axis: int = -1
    axes: list[int] = field(default_factory=list)
    """The axes the batch statistics are taken over: every axis but the channels."""
    operand_shapes: tuple[list[int], list[int]] = ([], [])
    """The static shapes of the mean and variance as the op reads them."""


class SavedModelRunner:
    """The runner protocol (``runtime.Runner``) over a SavedModel's serving signature (see the
    module's docstring)."""

    fixed_batch: int | None = None  # any batch size runs

    def __init__(
        self,
        tf: Any,
        function: Any,
        frozen: Any,
        ops: list[BatchNormOp],
        layers: list[LayerInfo],
        variables: Mapping[str, tuple[Any, Any]],
        scales: Mapping[str, tuple[np.ndarray, np.ndarray]],
    ) -> None:
        self.tf = tf
        self.function = function
        self.ops = ops
        self._layers = layers
        self.variables = variables
        self.scales = scales
        self.notes: list[str] = []
        self.loader = savedmodel.SIGNATURE
        self.input_names = [spec.name for spec in _signature_specs(function)]
        self.output_names = sorted(function.structured_outputs)
        self.graph_def = frozen.graph.as_graph_def()
        self.feeds = [tensor.name for tensor in frozen.inputs]
        self.fetches = [tensor.name for tensor in frozen.outputs]
        self._saved: dict[str, tuple[np.ndarray, np.ndarray]] = {
            path: (np.array(mean.numpy()), np.array(variance.numpy()))
            for path, (mean, variance) in variables.items()
        }
        self._estimates: Statistics = {}
        self._training: Any = None
        self._figured = False

    @property
    def layers(self) -> Sequence[LayerInfo]:
        return self._layers

    def __enter__(self) -> SavedModelRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def use_estimates(self, statistics: Statistics) -> None:
        self._estimates = {path: value for path, value in statistics.items()}

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        results = []
        for mode in modes:
            if mode == STORED:
                results.append(self._stored(inputs))
            elif mode == TRAINING:
                results.append(self._batch_statistics(inputs))
            elif mode == ESTIMATED:
                try:
                    self._assign(self._estimates)
                    results.append(PassResult(self._serve(inputs), [], []))
                finally:
                    self._restore()
            else:
                raise ValueError(f"unknown mode {mode!r}")
        return results

    def _serve(self, inputs: Sequence[np.ndarray]) -> list[tuple[str, np.ndarray]]:
        tf = self.tf
        feed = {
            name: tf.constant(array) for name, array in zip(self.input_names, inputs, strict=True)
        }
        try:
            outputs = self.function(**feed)
        except Exception as exc:  # shapes the graph rejects, a failing kernel
            raise ModelReadError(f"the model failed on the batch ({describe_error(exc)})") from None
        return [(name, np.asarray(outputs[name])) for name in self.output_names]

    def _stored(self, inputs: Sequence[np.ndarray]) -> PassResult:
        outputs = self._serve(inputs)
        figures: list[CallFigures] = []
        if not self._figured and self.ops:
            self._figured = True
            watched = [op.x for op in self.ops] + [op.output or op.x for op in self.ops]
            values = self._prune(self.graph_def, watched)(inputs)
            count = len(self.ops)
            for position, op in enumerate(self.ops):
                if op.output is None:
                    continue
                mean, variance = self._saved[op.path]
                gamma, beta = self.scales[op.path]
                figures.append(
                    figures_of(
                        op.path,
                        _channels_first(values[count + position], op.channel_axis),
                        _channels_first(values[position], op.channel_axis),
                        (gamma, beta, mean.ravel(), variance.ravel(), op.epsilon),
                    )
                )
        return PassResult(outputs, figures, [])

    def _batch_statistics(self, inputs: Sequence[np.ndarray]) -> PassResult:
        if not self.ops:
            return PassResult(self._serve(inputs), [], [])
        if self._training is None:
            graph_def = training_graph(self.tf, self.graph_def, self.ops)
            names = [f"{_OWN}/{i}/{what}:0" for i in range(len(self.ops)) for what in _FETCHED]
            outputs = [op.output for op in self.ops if op.output is not None]
            self._training = self._prune(graph_def, [*self.fetches, *names])
            first = self._prune(graph_def, [*self.fetches, *names, *outputs])
            values = first(inputs)
        else:
            values = self._training(inputs)
        count = len(self.fetches)
        outputs_now = [
            (name, values[i]) for i, name in zip(range(count), self.output_names, strict=True)
        ]
        moments = []
        for position, op in enumerate(self.ops):
            mean, variance, shape = values[count + 3 * position : count + 3 * position + 3]
            channels = max(int(np.size(mean)), 1)
            moments.append(
                Moments(
                    op.path,
                    np.asarray(mean, dtype=np.float64).ravel(),
                    np.asarray(variance, dtype=np.float64).ravel(),
                    int(shape[0]),
                    int(np.prod(shape)) // channels,
                )
            )
        figures = []
        extra = values[count + 3 * len(self.ops) :]
        if extra:
            found = [op for op in self.ops if op.output is not None]
            figures = [
                figures_of(op.path, _channels_first(value, op.channel_axis))
                for op, value in zip(found, extra, strict=True)
            ]
        return PassResult(outputs_now, figures, moments)

    def _prune(self, graph_def: Any, fetches: list[str]) -> Any:
        """A callable running ``graph_def`` on a batch, returning ``fetches`` as arrays."""
        tf = self.tf

        def imported() -> None:
            tf.compat.v1.import_graph_def(graph_def, name="")

        wrapped = tf.compat.v1.wrap_function(imported, [])
        graph = wrapped.graph
        try:
            pruned = wrapped.prune(
                feeds=[graph.get_tensor_by_name(name) for name in self.feeds],
                fetches=[graph.get_tensor_by_name(name) for name in fetches],
            )
        except Exception as exc:  # a graph TensorFlow cannot import or cut
            raise ModelReadError(
                f"the serving graph cannot be rewritten ({describe_error(exc)})"
            ) from None

        def run(inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
            try:
                values = pruned(*(tf.constant(array) for array in inputs))
            except Exception as exc:  # shapes the graph rejects, a failing kernel
                raise ModelReadError(
                    f"the model failed on the batch ({describe_error(exc)})"
                ) from None
            return [np.asarray(value) for value in values]

        return run

    def _assign(self, statistics: Statistics) -> None:
        for path, values in statistics.items():
            if path not in self.variables:
                continue
            for variable, value in zip(self.variables[path], values, strict=True):
                dtype = variable.dtype.as_numpy_dtype
                variable.assign(np.asarray(value, dtype=dtype).reshape(variable.shape))

    def _restore(self) -> None:
        self._assign(self._saved)


#: What the training graph fetches for each op, in order.
_FETCHED = ("mean_flat", "variance_flat", "shape")


def _channels_first(values: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(np.asarray(values), axis, 1) if np.ndim(values) > 1 else values


def _signature_specs(function: Any) -> list[Any]:
    """The signature's input specs, in the order its frozen graph takes them."""
    structure = function.structured_input_signature[1]
    return [structure[name] for name in sorted(structure)]


class NotRewritten(ModelReadError):
    """A serving graph bncheck cannot rewrite (its variables cannot all be frozen: a random
    layer's state the graph assigns, say); it still runs as TensorFlow serves it."""


def open_runner(
    path: str, description: ModelDescription
) -> tuple[SavedModelRunner, list[InputSpec]]:
    """``open_serving``, a SavedModel without a serving signature refused (``ModelReadError``)."""
    opened = open_serving(path, description)
    if opened is None:
        raise ModelReadError(f"the SavedModel has no {SIGNATURE} signature to run")
    return opened


def open_serving(
    path: str, description: ModelDescription
) -> tuple[SavedModelRunner, list[InputSpec]] | None:
    """Load the SavedModel at ``path`` (already scanned for ops not known to be pure) and find
    the BatchNorm ops of its serving signature among the layers ``description`` (bncheck's
    static reading of it) names; ``None`` when it has no serving signature."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    try:
        restored = tf.saved_model.load(path)
    except Exception as exc:  # TensorFlow raises many kinds; the user needs one line
        raise ModelReadError(
            f"TensorFlow cannot load the SavedModel ({describe_error(exc)})"
        ) from None
    function = getattr(restored, "signatures", {}).get(SIGNATURE)
    if function is None:
        return None
    specs = [_spec(spec) for spec in _signature_specs(function)]
    try:
        frozen = convert_variables_to_constants_v2(function)
    except Exception as exc:  # a graph the freezer cannot inline
        raise NotRewritten(
            f"bncheck cannot rewrite the serving graph to measure its BatchNorm ops: TensorFlow "
            f"cannot freeze it ({describe_error(exc)})"
        ) from None
    placeholders = {id(outer): inner.op.name for outer, inner in function.graph.captures}
    layers: list[LayerInfo] = []
    variables: dict[str, tuple[Any, Any]] = {}
    scales: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    constants: dict[str, tuple[str, str]] = {}
    by_path = {layer.path: layer for layer in description.layers}
    groups = description.checkpoint.groups if description.checkpoint is not None else ()
    for group in groups:
        if group.path not in by_path or not set(_STATISTICS) <= set(group.keys):
            continue
        found = {name: _variable(restored, key) for name, key in group.keys.items()}
        mean, variance = found["moving_mean"], found["moving_variance"]
        if mean is None or variance is None:
            continue
        names = [placeholders.get(id(v.handle)) for v in (mean, variance)]
        if names[0] is None or names[1] is None:
            continue  # the serving function does not read them
        constants[group.path] = (names[0], names[1])
        variables[group.path] = (mean, variance)
        size = int(np.prod(mean.shape))
        gamma, beta = found.get("gamma"), found.get("beta")
        scales[group.path] = (
            np.ones(size) if gamma is None else np.asarray(gamma.numpy(), np.float64).ravel(),
            np.zeros(size) if beta is None else np.asarray(beta.numpy(), np.float64).ravel(),
        )
    graph_def = frozen.graph.as_graph_def()
    ops = find_batchnorm_ops(graph_def, constants)
    _shape_ops(tf, graph_def, ops)
    ops = [op for op in ops if op.axes]
    for layer_path in dict.fromkeys(op.path for op in ops):
        static = by_path[layer_path]
        first = next(op for op in ops if op.path == layer_path)
        mean_value, variance_value = (
            np.asarray(v.numpy(), np.float64) for v in variables[layer_path]
        )
        layers.append(
            LayerInfo(
                path=layer_path,
                trainable=static.trainable is not False,
                epsilon=first.epsilon,
                momentum=static.momentum,
                moving_mean=mean_value.ravel(),
                moving_variance=variance_value.ravel(),
            )
        )
    kept = {layer.path for layer in layers}
    runner = SavedModelRunner(
        tf,
        function,
        frozen,
        ops,
        layers,
        {name: pair for name, pair in variables.items() if name in kept},
        scales,
    )
    if (Path(path) / savedmodel.KERAS_METADATA).is_file():
        runner.loader = savedmodel.TF_KERAS
    elif hasattr(restored, "serve"):
        runner.loader = savedmodel.KERAS_EXPORT
    missing = [layer.path for layer in description.layers if layer.path not in kept]
    if missing and layers:
        runner.notes.append(
            f"{len(missing)} BatchNorm layer(s) of the file were not found in the serving "
            "signature's graph, and are not measured: " + ", ".join(missing[:5])
        )
    return runner, specs


def _variable(root: Any, key: str) -> Any:
    """The restored variable a checkpoint key names (``layer_with_weights-1/moving_mean/
    .ATTRIBUTES/VARIABLE_VALUE``, ``variables/4/.ATTRIBUTES/VARIABLE_VALUE``); ``None`` if the
    restored objects do not lead to one."""
    head = key.split("/.ATTRIBUTES/", 1)[0]
    found = root
    try:
        for part in head.split("/"):
            if hasattr(found, part):
                found = getattr(found, part)
            elif part.isdigit():
                found = found[int(part)]
            else:
                return None
    except (IndexError, KeyError, TypeError):
        return None
    return found if hasattr(found, "handle") and hasattr(found, "assign") else None


def _spec(spec: Any) -> InputSpec:
    return InputSpec(
        name=str(spec.name or "input"),
        shape=tuple(spec.shape.as_list()),
        dtype=str(np.dtype(spec.dtype.as_numpy_dtype)),
    )


def _node_name(reference: str) -> str:
    return reference.lstrip("^").split(":", 1)[0]


def _tensor_name(reference: str) -> str:
    return reference if ":" in reference else f"{reference}:0"


class _Graph:
    """The nodes of a frozen GraphDef, by name, with their consumers."""

    def __init__(self, graph_def: Any) -> None:
        self.nodes = {node.name: node for node in graph_def.node}
        self.consumers: dict[str, list[tuple[Any, int]]] = {}
        for node in graph_def.node:
            for index, reference in enumerate(node.input):
                if not reference.startswith("^"):
                    self.consumers.setdefault(_node_name(reference), []).append((node, index))

    def source(self, reference: str) -> str:
        """The node a value comes from, through identities, casts and reshapes."""
        seen: set[str] = set()
        name = _node_name(reference)
        while name in self.nodes and name not in seen:
            seen.add(name)
            node = self.nodes[name]
            if node.op not in _PASS_THROUGH or not node.input:
                break
            name = _node_name(node.input[0])
        return name

    def users(self, name: str) -> Iterator[tuple[Any, int]]:
        """The nodes reading a value, through casts and identities."""
        queue, seen = [name], set()
        while queue:
            current = queue.pop()
            if current in seen:
                continue
            seen.add(current)
            for node, index in self.consumers.get(current, []):
                if node.op in ("Cast", "Identity"):
                    queue.append(node.name)
                else:
                    yield node, index

    def scalar(self, reference: str) -> float | None:
        node = self.nodes.get(self.source(reference))
        if node is None or node.op != "Const":
            return None
        import tensorflow as tf

        value = tf.make_ndarray(node.attr["value"].tensor)
        return float(value) if value.size == 1 else None


def find_batchnorm_ops(
    graph_def: Any, constants: Mapping[str, tuple[str, str]]
) -> list[BatchNormOp]:
    """Every BatchNorm op of a frozen graph reading the statistics of a layer ``constants``
    names (by path: the constants its moving mean and variance became), in graph order."""
    graph = _Graph(graph_def)
    owners = {pair: path for path, pair in constants.items()}
    found: list[BatchNormOp] = []
    for node in graph_def.node:
        if node.op in FUSED_OPS and len(node.input) >= 5:
            if node.attr["is_training"].b:
                continue
            pair = (graph.source(node.input[3]), graph.source(node.input[4]))
            if pair in owners:
                data_format = node.attr["data_format"].s.decode() or "NHWC"
                found.append(
                    BatchNormOp(
                        path=owners[pair],
                        x=_tensor_name(node.input[0]),
                        output=f"{node.name}:0",
                        mean_use=(node.name, 3),
                        variance_use=(node.name, 4),
                        epsilon=float(node.attr["epsilon"].f),
                        channel_axis=1 if data_format.startswith("NC") else -1,
                    )
                )
        elif node.op in _ADDS and len(node.input) == 2:
            op = _decomposed(graph, node, constants)
            if op is not None:
                found.append(op)
    return found


def _decomposed(
    graph: _Graph, add: Any, constants: Mapping[str, tuple[str, str]]
) -> BatchNormOp | None:
    """The ``tf.nn.batch_normalization`` multiply-add whose ``variance + epsilon`` is ``add``."""
    sources = [graph.source(reference) for reference in add.input]
    for path, (mean_name, variance_name) in constants.items():
        if variance_name not in sources:
            continue
        position = sources.index(variance_name)
        epsilon = graph.scalar(add.input[1 - position])
        if epsilon is None:
            continue
        inv = _inverse_deviation(graph, add.name)
        if inv is None:
            continue
        mean_use = x_mul = None
        for node, index in graph.users(inv):
            if node.op != "Mul":
                continue
            other = node.input[1 - index]
            if graph.source(other) == mean_name:
                mean_use = (node.name, 1 - index)
            else:
                x_mul = (node, 1 - index)
        if mean_use is None or x_mul is None:
            continue
        node, index = x_mul
        output = next(
            (f"{user.name}:0" for user, _ in graph.users(node.name) if user.op in _ADDS), None
        )
        return BatchNormOp(
            path=path,
            x=_tensor_name(node.input[index]),
            output=output,
            mean_use=mean_use,
            variance_use=(add.name, position),
            epsilon=epsilon,
        )
    return None


def _inverse_deviation(graph: _Graph, add: str) -> str | None:
    """``rsqrt(variance + epsilon)``, times gamma where the layer scales."""
    rsqrt = next((node for node, _ in graph.users(add) if node.op == "Rsqrt"), None)
    if rsqrt is None:
        return None
    users = [node for node, _ in graph.users(rsqrt.name)]
    # Scaled: the only reader is the Mul by gamma, whose result both products read.
    if len(users) == 1 and users[0].op == "Mul":
        return str(users[0].name)
    return str(rsqrt.name)


def _shape_ops(tf: Any, graph_def: Any, ops: list[BatchNormOp]) -> None:
    """Each op's reduction axes and the static shapes of its statistics, from the graph as
    TensorFlow imports it; an op whose input rank is unknown keeps no axes (and is dropped)."""
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    for op in ops:
        x = graph.get_tensor_by_name(op.x)
        rank = x.shape.rank
        if rank is None or rank < 2:
            continue
        shapes = []
        for node_name, index in (op.mean_use, op.variance_use):
            operand = graph.get_operation_by_name(node_name).inputs[index]
            if not operand.shape.is_fully_defined():
                break
            shapes.append(operand.shape.as_list())
        if len(shapes) != 2:
            continue
        if op.mean_use[1] == 3 and graph.get_operation_by_name(op.mean_use[0]).type in FUSED_OPS:
            channel = op.channel_axis % rank
        else:
            padded = [1] * (rank - len(shapes[0])) + shapes[0]
            wide = [axis for axis, size in enumerate(padded) if size != 1]
            if len(wide) > 1 or len(padded) > rank:
                continue
            channel = wide[0] if wide else rank - 1
        op.channel_axis = channel
        op.axes = [axis for axis in range(rank) if axis != channel]
        op.operand_shapes = (shapes[0], shapes[1])


def training_graph(tf: Any, graph_def: Any, ops: list[BatchNormOp]) -> Any:
    """A copy of the frozen graph in which each op's mean and variance inputs are its input's
    batch mean and biased variance over ``op.axes``; each op's moments (flattened to the
    channels) and its input's shape are the nodes ``bncheck/<position>/<what>``."""
    copy = type(graph_def)()
    copy.CopyFrom(graph_def)
    nodes = {node.name: node for node in copy.node}
    imported = tf.Graph()
    with imported.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    for position, op in enumerate(ops):
        dtype = imported.get_tensor_by_name(op.x).dtype
        prefix = f"{_OWN}/{position}"
        added = _Nodes(copy, prefix, dtype.as_datatype_enum)
        axes = added.constant("axes", np.array(op.axes, np.int32))
        mean = added.node("mean", "Mean", [op.x, axes], keep_dims=True, Tidx=tf.int32)
        squared = added.node("squared", "SquaredDifference", [op.x, mean])
        variance = added.node("variance", "Mean", [squared, axes], keep_dims=True, Tidx=tf.int32)
        flat = added.constant("flat_shape", np.array([-1], np.int32))
        added.node("mean_flat", "Reshape", [mean, flat], Tshape=tf.int32)
        added.node("variance_flat", "Reshape", [variance, flat], Tshape=tf.int32)
        added.node("shape", "Shape", [op.x], out_type=tf.int32)
        for what, value, (node_name, index), shape in (
            ("mean", mean, op.mean_use, op.operand_shapes[0]),
            ("variance", variance, op.variance_use, op.operand_shapes[1]),
        ):
            consumer = imported.get_operation_by_name(node_name)
            wanted = consumer.inputs[index].dtype
            shaped = added.node(
                f"{what}_operand",
                "Reshape",
                [value, added.constant(f"{what}_shape", np.array(shape, np.int32))],
                Tshape=tf.int32,
            )
            if wanted != dtype:
                shaped = added.node(
                    f"{what}_cast", "Cast", [shaped], SrcT=dtype, DstT=wanted, T=None
                )
            nodes[node_name].input[index] = shaped
    return copy


class _Nodes:
    """NodeDefs added to a GraphDef under one prefix, computing in one element type."""

    def __init__(self, graph_def: Any, prefix: str, dtype: int) -> None:
        self.graph_def = graph_def
        self.prefix = prefix
        self.dtype = dtype

    def constant(self, suffix: str, value: np.ndarray) -> str:
        import tensorflow as tf

        node = self.graph_def.node.add(name=f"{self.prefix}/{suffix}", op="Const")
        node.attr["dtype"].type = tf.as_dtype(value.dtype).as_datatype_enum
        node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))
        return str(node.name)

    def node(self, suffix: str, op: str, inputs: list[str], **attributes: Any) -> str:
        node = self.graph_def.node.add(name=f"{self.prefix}/{suffix}", op=op, input=inputs)
        if "T" not in attributes:
            node.attr["T"].type = self.dtype
        for key, value in attributes.items():
            if value is None:
                continue
            if isinstance(value, bool):
                node.attr[key].b = value
            else:
                node.attr[key].type = value.as_datatype_enum
        return str(node.name)
