"""Running ONNX models with onnxruntime for the probe (``pip install 'bncheck[onnx]'``).

An ONNX graph is a list of operators, not code; but onnxruntime also runs operators of other
domains (``com.microsoft`` contrib ops, custom ops registered by libraries), and reads external
data relative to its working directory. So without ``--unsafe`` a graph runs only if every node,
in subgraphs (If, Loop, Scan bodies) and model-local functions too, is a standard operator known
to be pure (``pure_ops.ONNX_DOMAINS``); anything else is BN017 naming it, and the probe does not
run. Every tensor kept in an external file (initializers, ``Constant`` values, sparse tensors, in
subgraphs too) is inlined by bncheck from inside the model's folder only, with the same checks as
static inspection, and the model reaches onnxruntime as those vetted bytes: onnxruntime never
opens another file.

ONNX has no training mode to switch to, so the probe builds one. The inference pass runs the
model as it is, with every BatchNormalization node's input and output added to the graph's
outputs. The training-mode pass runs a copy in which each BatchNormalization node is rewritten
into normalisation by the batch's own statistics, ``(x - mean) / sqrt(var + epsilon) * scale +
B`` with the mean and (biased) variance over every axis but the channels: what PyTorch's and
Keras's BatchNorm compute in training mode, without updating anything. Every other node is left
as it is, so the two passes differ by normalisation alone, and each layer is measured from
inside, as in Keras models. The watched activations are held in memory for the whole batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError, UsageError
from bncheck.probe import measure, pure_ops, safety
from bncheck.probe.data import InputSpec
from bncheck.probe.data.batches import BatchPlan
from bncheck.probe.measure import Outputs
from bncheck.probe.options import ProbeOptions, StepReporter
from bncheck.probe.results import CodeReference, ProbeResult
from bncheck.probe.runtime import (
    STORED,
    TRAINING,
    CallFigures,
    LayerInfo,
    Moments,
    PassResult,
    Statistics,
    figures_of,
)
from bncheck.readers.onnx import onnx_graph, onnx_proto
from bncheck.readers.onnx.onnx_graph import BatchNormNode

LOADER = "onnxruntime"
INSTALL_HINT = "probing ONNX models needs onnxruntime: pip install 'bncheck[onnx]'"
#: Element types the training-mode rewrite computes in.
_FLOAT_TYPES = {
    np.dtype("float32"): onnx_proto.FLOAT,
    np.dtype("float64"): onnx_proto.DOUBLE,
    np.dtype("float16"): onnx_proto.FLOAT16,
}
#: ReduceMean takes its axes as an input from opset 18 on, as an attribute before.
_AXES_AS_INPUT = 18
#: Prefix of every name bncheck adds to a graph.
_OWN = "bncheck"

Watched = dict[str, np.ndarray]


def probe(
    path: str, options: ProbeOptions, step: StepReporter, untouched: Mapping[str, bool]
) -> ProbeResult:
    """Measure the graph over the data (``measure.measure``). ``untouched`` gives, by layer
    path, whether the static description found the layer's statistics never updated."""
    step("reading the ONNX graph")
    model = onnx_graph.load(path)
    content = scan_graph(model)
    if content and not options.unsafe:
        return ProbeResult(path, None, content, options.unsafe, skipped=safety.refusal(content))
    runner, specs = open_runner(path, model)
    notes = list(runner.notes)
    whole = runner.fixed_batch is not None
    if runner.fixed_batch is not None:
        notes.append(fixed_batch_note(runner.fixed_batch, options.batch_size))
        options = replace(options, batch_size=runner.fixed_batch)
    step("running the graph with onnxruntime")
    found = measure.ProbeFound(path, LOADER, content, options.unsafe)
    plan = BatchPlan(specs, options, whole=whole)
    return measure.probe_result(runner, plan, found, untouched, step, notes)


def _momentum(recorded: float) -> float | None:
    """The momentum that governed training, where the graph tells: ``None`` for exactly 1.0,
    which PyTorch's exporter writes for ``momentum=None`` (a cumulative average that moves), so
    it cannot mean statistics held still (``verdict.layer_momentum_holds_statistics``)."""
    return None if recorded == 1.0 else recorded


def fixed_batch(model: Any) -> int | None:
    """The batch size the graph's inputs are declared with (an export without a dynamic batch
    dimension), or ``None`` where it takes any. onnxruntime refuses a batch of another size, and
    the training-mode pass needs at least two samples to take statistics over."""
    dimensions = [_batch_dimension(value) for value in _graph_inputs(model)]
    sizes = {size for size in dimensions if size is not None}
    if not dimensions or len(sizes) < len(set(dimensions)):
        return None
    if len(sizes) > 1:
        raise ModelReadError(
            f"its inputs are declared with different fixed batch sizes ({sorted(sizes)}): "
            "export it with a dynamic batch dimension"
        )
    [size] = sizes
    if size < 2:
        raise ModelReadError(
            "its inputs have a fixed batch dimension of 1, and batch statistics need at least "
            "2 samples: export it with a dynamic batch dimension (torch.onnx.export(..., "
            "dynamic_axes={INPUT: {0: 'batch'}, ...}))"
        )
    return size


def fixed_batch_note(size: int, asked: int) -> str:
    """What a report says of a model that takes batches of one size only."""
    instead = "" if asked == size else f" instead of --batch-size {asked}"
    return (
        f"the model's inputs have a fixed batch dimension of {size}: it ran whole batches of "
        f"{size}{instead} (a short last batch is left out)"
    )


def _batch_dimension(value: Any) -> int | None:
    dims = value.type.tensor_type.shape.dim
    if not dims or dims[0].dim_value <= 0:
        return None
    return int(dims[0].dim_value)


class OnnxRunner:
    """The runner protocol (``runtime.Runner``) over onnxruntime.

    - ``stored``: the model as it is, in a session of its own, so its outputs are onnxruntime's
      own inference outputs bit for bit. The layers' figures come from a second session that
      also outputs every BatchNormalization node's input and output, run on the first batch
      only (each layer's figures describe that batch);
    - ``training``: a copy whose BatchNormalization nodes normalise with the batch's statistics
      (``_Rewrite``), outputting each node's batch mean and variance and its input's shape;
    - ``estimated``: a copy with the chosen nodes' mean and variance initializers replaced, a
      session per ``use_estimates``: exactly the graph ``bncheck recalibrate`` would write.
    """

    def __init__(self, ort: Any, model: Any, directory: Path) -> None:
        self.ort = ort
        self.model = model
        self.nodes = onnx_graph.batchnorm_nodes(model.graph)
        self.names = [value.name for value in _graph_inputs(model)]
        self.fixed_batch = fixed_batch(model)
        """The only batch size the graph takes; ``None`` for any."""
        self.values = onnx_graph.Values(model.graph, directory)
        self.stored: dict[str, tuple[np.ndarray, ...]] = {}
        self._layers: list[LayerInfo] = []
        self.notes: list[str] = []
        for bn in self.nodes:
            gamma, beta, mean, variance = (
                np.asarray(self.values.array(name)).ravel() for name in bn.node.input[1:5]
            )
            self.stored[bn.path] = (gamma, beta, mean, variance)
            self._layers.append(
                LayerInfo(
                    path=bn.path,
                    # Stored statistics can be replaced; computed ones are BN022's.
                    trainable=all(
                        self.values.tensor(name) is not None for name in bn.node.input[3:5]
                    ),
                    epsilon=bn.attribute("epsilon", onnx_graph.DEFAULT_EPSILON),
                    momentum=_momentum(bn.attribute("momentum", onnx_graph.DEFAULT_MOMENTUM)),
                    moving_mean=mean,
                    moving_variance=variance,
                    gamma=gamma,
                    beta=beta,
                )
            )
        self._inference = _Session(ort, model, self.names)
        self._watching: _Session | None = None
        self._training: _Session | None = None
        self._estimated: _Session | None = None
        self._examples: Watched | None = None

    @property
    def layers(self) -> Sequence[LayerInfo]:
        return self._layers

    def __enter__(self) -> OnnxRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        # Nothing a pass does changes the model: each mode has its own graph.
        self._estimated = None

    def run(self, inputs: Sequence[np.ndarray], *modes: str) -> list[PassResult]:
        size = len(inputs[0]) if inputs else None
        if self.fixed_batch is not None and size != self.fixed_batch:
            raise ModelReadError(
                f"the model takes batches of exactly {self.fixed_batch} samples (a fixed batch "
                f"dimension), and this run needs one of {size}: give at least "
                f"{2 * self.fixed_batch} samples, or export the model with a dynamic batch "
                "dimension"
            )
        results = []
        for mode in modes:
            if mode == STORED:
                results.append(self._stored(inputs))
            elif mode == TRAINING:
                results.append(self._batch_statistics(inputs))
            else:
                if self._estimated is None:
                    raise ValueError("no estimates to run with: call use_estimates first")
                outputs, _ = self._estimated.run(inputs)
                results.append(PassResult(outputs, [], []))
        return results

    def use_estimates(self, statistics: Statistics) -> None:
        self._estimated = _Session(self.ort, self.with_statistics(statistics), self.names)

    def with_statistics(self, statistics: Statistics) -> Any:
        """A copy of the model whose chosen nodes normalise with ``statistics`` (by layer path),
        in their stored element type: each node reads new initializers of its own, since an
        exporter may share one tensor between nodes whose statistics were equal (fresh ones)."""
        copy = _copy(self.model)
        for position, bn in enumerate(self.nodes):
            if bn.path not in statistics:
                continue
            node = copy.graph.node[bn.index]
            for slot, value in zip((3, 4), statistics[bn.path], strict=True):
                stored = self.values.tensor(bn.node.input[slot])
                assert stored is not None  # only layers whose statistics are stored are chosen
                dtype = np.dtype(onnx_proto.ELEMENT_TYPES[stored.data_type])
                name = f"{_OWN}_estimate_{position}_{slot}"
                copy.graph.initializer.add(
                    name=name,
                    dims=list(stored.dims),
                    data_type=stored.data_type,
                    raw_data=np.asarray(value, dtype=dtype).reshape(tuple(stored.dims)).tobytes(),
                )
                node.input[slot] = name
        return copy

    def _stored(self, inputs: Sequence[np.ndarray]) -> PassResult:
        outputs, _ = self._inference.run(inputs)
        figures: list[CallFigures] = []
        if self._examples is None and self.nodes:
            if self._watching is None:
                self._watching = _Session(self.ort, _watching(self.model, self.nodes), self.names)
            _, self._examples = self._watching.run(inputs)
            for position, bn in enumerate(self.nodes):
                gamma, beta, mean, variance = self.stored[bn.path]
                figures.append(
                    figures_of(
                        bn.path,
                        self._examples[_watched(position, "output")],
                        self._examples[_watched(position, "input")],
                        (gamma, beta, mean, variance, self._layers[position].epsilon),
                    )
                )
        return PassResult(outputs, figures, [])

    def _batch_statistics(self, inputs: Sequence[np.ndarray]) -> PassResult:
        if not self.nodes:
            outputs, _ = self._inference.run(inputs)
            return PassResult(outputs, [], [])
        figures: list[CallFigures] = []
        if self._training is None:
            if self._examples is None:
                self._stored(inputs)
            assert self._examples is not None
            try:
                graph = _training_graph(self.model, self.nodes, self._examples)
                self._training = _Session(self.ort, graph, self.names)
                # The first batch also gives each layer's figures in this mode.
                watching = _Session(self.ort, _watching(graph, self.nodes), self.names)
            except ModelReadError as exc:
                raise ModelReadError(f"the batch-statistics graph cannot run: {exc}") from None
            outputs, seen = watching.run(inputs)
            figures = [
                figures_of(bn.path, seen[_watched(position, "output")])
                for position, bn in enumerate(self.nodes)
            ]
        else:
            outputs, seen = self._training.run(inputs)
        moments = []
        for position, bn in enumerate(self.nodes):
            prefix = f"{_OWN}_training_{position}"
            shape = seen[f"{prefix}_input_shape"]
            channels = int(shape[1]) if len(shape) > 1 else 1
            values = int(np.prod(shape)) // max(channels, 1)
            moments.append(
                Moments(
                    bn.path,
                    np.asarray(seen[f"{prefix}_mean"], dtype=np.float64).ravel(),
                    np.asarray(seen[f"{prefix}_variance"], dtype=np.float64).ravel(),
                    int(shape[0]),
                    values,
                )
            )
        return PassResult(outputs, figures, moments)


def open_runner(path: str, model: Any) -> tuple[OnnxRunner, list[InputSpec]]:
    """The runner of ``model`` (read from ``path`` and checked with ``scan_graph``), its
    external tensors inlined from inside its folder, and its inputs."""
    ort = _import_onnxruntime()
    directory = Path(path).parent.resolve()
    _inline_external_data(model, directory)
    specs = [_input_spec(value) for value in _graph_inputs(model)]
    return OnnxRunner(ort, model, directory), specs


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    # Its logger prints node names raw, and node names come from the file: fatal only.
    onnxruntime.set_default_logger_severity(4)
    return onnxruntime


class _Session:
    """One onnxruntime session; each run gives the model's own outputs and the watched values."""

    def __init__(self, ort: Any, model: Any, inputs: list[str]) -> None:
        self.inputs = inputs
        self.outputs = [output.name for output in model.graph.output]
        try:
            quiet = ort.SessionOptions()
            quiet.log_severity_level = 4
            # The probe alternates sessions batch by batch: threads spinning in one session
            # while another runs would take the cores from it.
            quiet.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.session = ort.InferenceSession(
                model.SerializeToString(), quiet, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime reports unsupported graphs in many ways
            raise ModelReadError(f"onnxruntime cannot run the model ({_one_line(exc)})") from None

    def run(self, batch: Sequence[np.ndarray]) -> tuple[Outputs, Watched]:
        try:
            results = self.session.run(self.outputs, dict(zip(self.inputs, batch, strict=True)))
        except Exception as exc:  # a failing kernel, data the graph does not accept
            raise ModelReadError(f"onnxruntime failed on the batch ({_one_line(exc)})") from None
        named = [
            (name, np.asarray(value)) for name, value in zip(self.outputs, results, strict=True)
        ]
        own = [(name, value) for name, value in named if not name.startswith(_OWN)]
        return own, {name: value for name, value in named if name.startswith(_OWN)}


def _watched(position: int, kind: str) -> str:
    return f"{_OWN}_watched_{position}_{kind}"


def _watching(model: Any, nodes: list[BatchNormNode]) -> Any:
    """A copy of ``model`` that also outputs each BatchNorm node's input and output, under names
    of bncheck's own (through Identity nodes), so no model output is listed twice."""
    copy = _copy(model)
    node_class = onnx_proto.message_class("NodeProto")
    for position, bn in enumerate(nodes):
        for kind, name in (("input", bn.node.input[0]), ("output", bn.node.output[0])):
            alias = _watched(position, kind)
            copy.graph.node.append(node_class(op_type="Identity", input=[name], output=[alias]))
            copy.graph.output.add(name=alias)
    return copy


def _copy(model: Any) -> Any:
    copy = onnx_proto.model_class()()
    copy.CopyFrom(model)
    return copy


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _graph_inputs(model: Any) -> list[Any]:
    """The graph's real inputs: older IR versions also list the initializers as inputs."""
    stored = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in stored]


def _input_spec(value: Any) -> InputSpec:
    tensor_type = value.type.tensor_type
    dtype = onnx_proto.ELEMENT_TYPES.get(tensor_type.elem_type)
    if dtype is None or dtype == "bfloat16":
        raise ModelReadError(f"input {value.name!r} has an element type the probe cannot feed")
    shape = tuple(dim.dim_value if dim.dim_value > 0 else None for dim in tensor_type.shape.dim)
    return InputSpec(value.name, (None, *shape[1:]), dtype)


def scan_graph(model: Any) -> tuple[CodeReference, ...]:
    """Every node, in the graph, its subgraphs and the model's functions, that is not a standard
    operator known to be pure; once per operator."""
    functions: dict[tuple[str, str], list[Any]] = {}
    for function in model.functions:
        functions.setdefault((function.domain, function.name), []).append(function)
    found: dict[str, str] = {}
    visited: set[tuple[str, str]] = set()
    for where, node in _nodes(model.graph.node, "graph"):
        key = (node.domain, node.op_type)
        # onnxruntime prefers a kernel it registers to a model-local function of the same name:
        # a function in one of its domains is judged as the operator it shadows.
        if key in functions and not _runtime_domain(node.domain):
            if key not in visited:
                visited.add(key)
                for function in functions[key]:
                    found.update(
                        (op, inner)
                        for inner, op in _refused_nodes(function.node, f"function {function.name}")
                        if op not in found
                    )
            continue
        if node.op_type not in pure_ops.ONNX_DOMAINS.get(node.domain, ()):
            found.setdefault(_op_name(node), where)
    return tuple(CodeReference("graph-op", where, op) for op, where in found.items())


#: Domains onnxruntime registers kernels in (ONNX's own, its contrib ops, internal layouts).
_RUNTIME_DOMAINS = frozenset(
    {"", "ai.onnx", "ai.onnx.ml", "ai.onnx.training", "ai.onnx.preview.training"}
)


def _runtime_domain(domain: str) -> bool:
    return domain in _RUNTIME_DOMAINS or domain.startswith(
        ("com.microsoft", "com.ms.", "org.pytorch.")
    )


def _refused_nodes(nodes: Sequence[Any], where: str) -> Iterator[tuple[str, str]]:
    """A function body's nodes that are not standard pure operators. Functions calling other
    functions are refused here: ONNX forbids recursion, and no exporter nests them."""
    for inner, node in _nodes(nodes, where):
        if node.op_type not in pure_ops.ONNX_DOMAINS.get(node.domain, ()):
            yield inner, _op_name(node)


def _nodes(nodes: Sequence[Any], where: str) -> Iterator[tuple[str, Any]]:
    """Every node of a node list and of the subgraphs in its attributes, with where it is."""
    stack = [(where, node) for node in reversed(nodes)]
    while stack:
        place, node = stack.pop()
        yield place, node
        inside = f"{place}/{node.name or node.op_type}"
        for attribute in node.attribute:
            graphs = [attribute.g] if attribute.HasField("g") else []
            for graph in (*graphs, *attribute.graphs):
                stack.extend((inside, child) for child in reversed(graph.node))


def _op_name(node: Any) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain else node.op_type


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers, sparse ones, and node attributes' values,
    in subgraphs and functions too."""
    graphs = [model.graph]
    node_lists = [function.node for function in model.functions]
    while graphs or node_lists:
        if graphs:
            graph = graphs.pop()
            yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            node_lists.append(graph.node)
            continue
        for node in node_lists.pop():
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse_tensors = (
                    [attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []
                )
                for sparse in (*sparse_tensors, *attribute.sparse_tensors):
                    yield from (sparse.values, sparse.indices)
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)


def _inline_external_data(model: Any, directory: Path) -> None:
    """Put every external tensor's bytes into the model itself, read with bncheck's checks
    (inside the model's folder only); onnxruntime would read them from its working directory."""
    for tensor in _tensors(model):
        if tensor.data_location == onnx_proto.EXTERNAL:
            tensor.raw_data = onnx_graph.external_bytes(tensor, directory)
            del tensor.external_data[:]
            tensor.data_location = 0


def _training_graph(model: Any, nodes: list[BatchNormNode], seen: Watched) -> Any:
    """A copy of ``model`` whose BatchNormalization nodes normalise with batch statistics; the
    inference pass's activations (``seen``) give each node's input rank and type."""
    copy = _copy(model)
    opset = max(
        (entry.version for entry in copy.opset_import if entry.domain in ("", "ai.onnx")),
        default=1,
    )
    replacements = {
        bn.index: _Rewrite(copy.graph, bn, position, seen[_watched(position, "input")], opset).nodes
        for position, bn in enumerate(nodes)
    }
    rebuilt = [
        new for index, node in enumerate(copy.graph.node) for new in replacements.get(index, [node])
    ]
    del copy.graph.node[:]
    copy.graph.node.extend(rebuilt)
    node_class = onnx_proto.message_class("NodeProto")
    for position, bn in enumerate(nodes):
        prefix = f"{_OWN}_training_{position}"
        copy.graph.node.append(
            node_class(op_type="Shape", input=[bn.node.input[0]], output=[f"{prefix}_input_shape"])
        )
        for name in ("mean", "variance", "input_shape"):
            copy.graph.output.add(name=f"{prefix}_{name}")
    return copy


class _Rewrite:
    """The nodes that compute ``(x - mean) / sqrt(var + eps) * scale + B`` with the batch's
    statistics over every axis but 1, writing the BatchNorm node's first output."""

    def __init__(
        self, graph: Any, bn: BatchNormNode, position: int, example: np.ndarray, opset: int
    ) -> None:
        if example.dtype not in _FLOAT_TYPES:
            raise ModelReadError(f"{bn.path}: its input is {example.dtype}, not a float type")
        self.graph = graph
        self.dtype = example.dtype
        self.prefix = f"{_OWN}_training_{position}"
        self.node_class = onnx_proto.message_class("NodeProto")
        self.axes = [0, *range(2, example.ndim)]
        self.opset = opset
        x, scale, shift = bn.node.input[0], bn.node.input[1], bn.node.input[2]
        element = _FLOAT_TYPES[self.dtype]
        shape = self.constant("channel_shape", np.array([1, -1] + [1] * (example.ndim - 2)))
        epsilon = bn.attribute("epsilon", onnx_graph.DEFAULT_EPSILON)
        self.nodes = [
            self.reduce_mean(x, "mean"),
            self.node("Sub", [x, self.name("mean")], "centred"),
            self.node("Mul", [self.name("centred"), self.name("centred")], "squared"),
            self.reduce_mean(self.name("squared"), "variance"),
            self.node(
                "Add",
                [self.name("variance"), self.constant("epsilon", np.array(epsilon, self.dtype))],
                "shifted",
            ),
            self.node("Sqrt", [self.name("shifted")], "deviation"),
            self.node("Div", [self.name("centred"), self.name("deviation")], "normalised"),
            self.node("Cast", [scale], "scale_cast", to=element),
            self.node("Reshape", [self.name("scale_cast"), shape], "scale"),
            self.node("Cast", [shift], "shift_cast", to=element),
            self.node("Reshape", [self.name("shift_cast"), shape], "shift"),
            self.node("Mul", [self.name("normalised"), self.name("scale")], "scaled"),
            self.node(
                "Add", [self.name("scaled"), self.name("shift")], "out", output=bn.node.output[0]
            ),
        ]

    def name(self, suffix: str) -> str:
        return f"{self.prefix}_{suffix}"

    def constant(self, suffix: str, value: np.ndarray) -> str:
        integer = value.dtype.kind == "i"
        value = value.astype(np.int64) if integer else value
        self.graph.initializer.add(
            name=self.name(suffix),
            dims=list(value.shape),
            data_type=onnx_proto.INT64 if integer else _FLOAT_TYPES[self.dtype],
            raw_data=value.tobytes(),
        )
        return self.name(suffix)

    def node(
        self, op: str, inputs: list[str], suffix: str, output: str | None = None, **ints: Any
    ) -> Any:
        made = self.node_class(
            op_type=op, input=inputs, output=[output or self.name(suffix)], name=self.name(suffix)
        )
        for key, value in ints.items():
            attribute = made.attribute.add(name=key)
            if isinstance(value, list):
                attribute.ints.extend(value)
                attribute.type = onnx_proto.ATTRIBUTE_INTS
            else:
                attribute.i = value
                attribute.type = onnx_proto.ATTRIBUTE_INT
        return made

    def reduce_mean(self, source: str, suffix: str) -> Any:
        if self.opset >= _AXES_AS_INPUT:
            axes = self.constant(f"{suffix}_axes", np.array(self.axes))
            return self.node("ReduceMean", [source, axes], suffix, keepdims=1)
        return self.node("ReduceMean", [source], suffix, axes=self.axes, keepdims=1)
