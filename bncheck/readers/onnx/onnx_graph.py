"""ONNX models (``.onnx``), read with protobuf message definitions (``onnx_proto``): neither the
``onnx`` package nor a runtime is imported, and nothing is run.

Each ``BatchNormalization`` node takes ``X, scale, B, input_mean, input_var``. The four parameters
are found as initializers, as ``Constant`` node outputs, or through ``Identity`` nodes (the
PyTorch exporter makes equal tensors share one initializer that way). Their values are in
``raw_data``, in the typed fields, or in an external file. An external file must be a relative
path inside the model's directory, also after resolving symbolic links, and the byte range must
lie inside it; anything else is refused, so a model cannot make bncheck read other files.

Eval-mode export (PyTorch's ``torch.onnx.export``, tf2onnx) folds BatchNorm into the preceding
convolutions: such a graph has no BatchNorm left to check, and says so in a note.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import BatchStatisticsLayer, BNLayer, ModelDescription
from bncheck.readers.codecs import tensor_bytes
from bncheck.readers.onnx import onnx_proto
from bncheck.records import record

BATCHNORM = "BatchNormalization"
_ONNX_DOMAINS = ("", "ai.onnx")
#: Protocol buffers cannot exceed 2 GiB; larger ONNX models keep their weights in external files.
MAX_MODEL_BYTES = 2**31
#: ONNX's attribute defaults for BatchNormalization.
DEFAULT_EPSILON = 1e-5
DEFAULT_MOMENTUM = 0.9
PARAMETERS = ("gamma", "beta", "moving_mean", "moving_variance")
_MAX_ALIASES = 64
FOLDED_NOTE = (
    "BN folded: nothing to check (no BatchNormalization nodes; export in inference mode folds "
    "BatchNorm into the preceding convolutions)"
)
NO_BATCHNORM_NOTE = "no BatchNormalization nodes: nothing to check"
_CONVOLUTIONS = frozenset({"Conv", "ConvTranspose"})
#: Ops between a batch mean and the BatchNormalization node that only reshape or cast it.
_PASS_THROUGH = frozenset({"Identity", "Squeeze", "Unsqueeze", "Reshape", "Flatten", "Cast"})


@record
class BatchNormNode:
    """One BatchNormalization node of the main graph."""

    index: int
    """Its position among the graph's nodes."""
    path: str
    """The module path it came from (``layer1.0.bn1`` for PyTorch exports), else its node name."""
    node: Any
    """The ``NodeProto``."""

    def attribute(self, name: str, default: float) -> float:
        """A number attribute of the node. A float is stored as float32: the number it was
        written from is the shortest decimal that rounds to it (momentum 0.999, not
        0.9990000128746033, which PyTorch's words would show as 0.000999987)."""
        for attribute in self.node.attribute:
            if attribute.name == name:
                if attribute.HasField("f"):
                    return float(np.format_float_positional(np.float32(attribute.f), trim="-"))
                return float(attribute.i)
        return default


def load(path: str) -> Any:
    """The ``ModelProto`` of an ``.onnx`` file."""
    from google.protobuf.message import DecodeError

    size = os.path.getsize(path)
    if size > MAX_MODEL_BYTES:
        raise ModelReadError("larger than 2 GiB, which a protocol buffer cannot be")
    model = onnx_proto.model_class()()
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        model.ParseFromString(data)
    except DecodeError as exc:
        raise ModelReadError(f"not a valid ONNX model ({exc})") from None
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelReadError("not an ONNX model (no graph or IR version)")
    return model


def read(path: str) -> ModelDescription:
    model = load(path)
    values = Values(model.graph, Path(path).parent.resolve())
    from_pytorch = model.producer_name == "pytorch"
    estimator = "unbiased" if from_pytorch else None
    layers = []
    batch_statistics = []
    nodes = batchnorm_nodes(model.graph)
    producers = {output: node for node in model.graph.node for output in node.output}
    channels = 0
    for bn in nodes:
        if all(_batch_moment(producers, name) for name in list(bn.node.input)[3:5]):
            batch_statistics.append(_batch_statistics_layer(bn, values, from_pytorch))
            continue
        arrays = {}
        for name, input_name in zip(PARAMETERS, list(bn.node.input)[1:5], strict=False):
            array = values.array(input_name)
            if array is None:
                raise ModelReadError(
                    f"{bn.path}: {name} ({input_name!r}) is computed in the graph, not stored"
                )
            arrays[name] = array.ravel()
        if set(arrays) != set(PARAMETERS):
            raise ModelReadError(f"{bn.path}: BatchNormalization node has too few inputs")
        _check_channels(bn.path, arrays)
        channels += arrays["moving_mean"].size
        tensor_bytes.check_channel_total(channels)
        training = bn.attribute("training_mode", 0) == 1
        layers.append(
            BNLayer.without_config(
                arrays,
                path=bn.path,
                name=bn.path.rsplit("/", 1)[-1],
                class_name=BATCHNORM,
                axis=(1,),
                momentum=bn.attribute("momentum", DEFAULT_MOMENTUM),
                epsilon=bn.attribute("epsilon", DEFAULT_EPSILON),
                call_kwargs=({"training": True},) if training else (),
                source=", ".join(list(bn.node.input)[1:5]),
                framework="onnx",
                variance_estimator=estimator,
                words="pytorch" if from_pytorch else None,
            )
        )
    notes = [
        f"ONNX model from {model.producer_name or 'an unnamed producer'}, opset {_opset(model)}"
    ]
    if not nodes:
        folded = any(node.op_type in _CONVOLUTIONS for node in model.graph.node)
        notes.append(FOLDED_NOTE if folded else NO_BATCHNORM_NOTE)
    return ModelDescription(
        path=path,
        format="onnx",
        layers=tuple(layers),
        notes=tuple(notes),
        batch_statistics=tuple(batch_statistics),
    )


def _batch_moment(producers: dict[str, Any], name: str) -> bool:
    """Whether the graph computes ``name`` as a mean over the batch (``ReduceMean``, through
    ops that only reshape or cast it), as PyTorch exports ``track_running_stats=False``."""
    for _ in range(_MAX_ALIASES):
        node = producers.get(name)
        if node is None or node.domain not in _ONNX_DOMAINS:
            return False
        if node.op_type == "ReduceMean":
            return True
        if node.op_type not in _PASS_THROUGH or not node.input:
            return False
        name = node.input[0]
    return False


def _batch_statistics_layer(
    bn: BatchNormNode, values: Values, from_pytorch: bool
) -> BatchStatisticsLayer:
    """A node normalising with the batch's own mean and variance."""
    scale = values.array(bn.node.input[1]) if len(bn.node.input) > 1 else None
    prefix, _, leaf = bn.node.input[1].rpartition(".") if len(bn.node.input) > 1 else ("", "", "")
    return BatchStatisticsLayer(
        path=prefix if leaf == "weight" and prefix else bn.path,
        class_name=BATCHNORM,
        framework="onnx",
        evidence="the graph computes each batch's mean and variance with ReduceMean",
        channels=None if scale is None else int(scale.size),
        words="pytorch" if from_pytorch else None,
    )


def _opset(model: Any) -> int:
    versions = [entry.version for entry in model.opset_import if entry.domain in _ONNX_DOMAINS]
    return max(versions, default=0)


def _check_channels(path: str, arrays: dict[str, np.ndarray]) -> None:
    channels = arrays["moving_mean"].size
    for name, array in arrays.items():
        if array.size != channels or channels == 0:
            raise ModelReadError(
                f"{path}: {name} holds {array.size} values, moving_mean {channels}"
            )
        if array.dtype.kind != "f":
            raise ModelReadError(f"{path}: {name} holds {array.dtype} values, not floats")


def batchnorm_nodes(graph: Any) -> list[BatchNormNode]:
    """The main graph's BatchNormalization nodes, with unique paths, in graph order."""
    found: list[BatchNormNode] = []
    used: set[str] = set()
    for index, node in enumerate(graph.node):
        if node.op_type != BATCHNORM or node.domain not in _ONNX_DOMAINS:
            continue
        path = _module_path(node) or node.name or f"{BATCHNORM}_{index}"
        if path in used:
            path = f"{path}#{index}"
        used.add(path)
        found.append(BatchNormNode(index, path, node))
    return found


def _module_path(node: Any) -> str | None:
    """``layer1.0.bn1`` from an input named ``layer1.0.bn1.running_mean`` (PyTorch's export)."""
    if len(node.input) < 4:
        return None
    prefix, _, leaf = node.input[3].rpartition(".")
    return prefix if leaf == "running_mean" and prefix else None


class Values:
    """The constant tensors of a graph by name, read on demand, each once: a tensor shared by
    many nodes is decoded once and handed to each as the same read-only array."""

    def __init__(self, graph: Any, directory: Path) -> None:
        self.directory = directory
        self.external = ExternalReads(directory)
        self.arrays: dict[str, np.ndarray] = {}
        self.tensors: dict[str, Any] = {tensor.name: tensor for tensor in graph.initializer}
        self.aliases: dict[str, str] = {}
        shadowed = {sparse.values.name for sparse in graph.sparse_initializer} & set(self.tensors)
        if shadowed:
            # onnxruntime reads the sparse one; bncheck would judge and write the other.
            raise ModelReadError(
                f"{sorted(shadowed)[0]!r} is both a dense and a sparse initializer"
            )
        for node in graph.node:
            if node.domain not in _ONNX_DOMAINS or len(node.output) != 1:
                continue
            if node.op_type == "Identity" and len(node.input) == 1:
                self.aliases[node.output[0]] = node.input[0]
            elif node.op_type == "Constant":
                for attribute in node.attribute:
                    if attribute.name == "value" and attribute.HasField("t"):
                        self.tensors[node.output[0]] = attribute.t

    def stored_name(self, name: str) -> str | None:
        """The stored tensor a value name stands for, through Identity nodes; ``None`` when the
        graph computes it."""
        for _ in range(_MAX_ALIASES):
            if name in self.tensors:
                return name
            if name not in self.aliases:
                return None
            name = self.aliases[name]
        return None

    def tensor(self, name: str) -> Any | None:
        stored = self.stored_name(name)
        return None if stored is None else self.tensors[stored]

    def array(self, name: str) -> np.ndarray | None:
        stored = self.stored_name(name)
        if stored is None:
            return None
        if stored not in self.arrays:
            array = tensor_array(self.tensors[stored], self.directory, self.external)
            array.flags.writeable = False
            self.arrays[stored] = array
        return self.arrays[stored]


def _layout(tensor: Any) -> tuple[str, list[int]]:
    """A tensor's element type and dimensions, checked (at most ``MAX_DIMENSIONS``)."""
    dtype = onnx_proto.ELEMENT_TYPES.get(tensor.data_type)
    if dtype is None:
        raise ModelReadError(f"tensor {tensor.name!r} has unsupported data type {tensor.data_type}")
    if len(tensor.dims) > tensor_bytes.MAX_DIMENSIONS:
        raise ModelReadError(
            f"tensor {tensor.name!r} has {len(tensor.dims)} dimensions; bncheck reads at most "
            f"{tensor_bytes.MAX_DIMENSIONS}"
        )
    dims = list(tensor.dims)
    if any(dim < 0 for dim in dims):
        raise ModelReadError(f"tensor {tensor.name!r} has a negative dimension")
    return dtype, dims


def _count(tensor: Any, dtype: str, dims: list[int], present: int) -> int:
    """The values ``dims`` needs, refused as soon as it passes the ``present`` bytes."""
    item_bytes = tensor_bytes.itemsize(dtype)
    return tensor_bytes.element_count(dims, item_bytes, present, f"tensor {tensor.name!r}")


def tensor_array(tensor: Any, directory: Path, external: ExternalReads | None = None) -> np.ndarray:
    """A ``TensorProto``'s values, from ``raw_data``, the typed fields or an external file."""
    dtype, dims = _layout(tensor)
    if tensor.data_location == onnx_proto.EXTERNAL:
        reads = external if external is not None else ExternalReads(directory)
        values = tensor_bytes.decode(reads.read(tensor), dtype)
    elif tensor.HasField("raw_data"):
        present = len(tensor.raw_data)
        expected = _count(tensor, dtype, dims, present) * tensor_bytes.itemsize(dtype)
        if present != expected:
            raise ModelReadError(
                f"tensor {tensor.name!r} holds {present} bytes, its shape needs {expected}"
            )
        values = tensor_bytes.decode(tensor.raw_data, dtype)
    else:
        values = _typed_values(tensor, dtype)
        count = _count(tensor, dtype, dims, values.size * tensor_bytes.itemsize(dtype))
        if values.size != count:
            raise ModelReadError(
                f"tensor {tensor.name!r} holds {values.size} values, its shape needs {count}"
            )
    return values.reshape(dims)


def _typed_values(tensor: Any, dtype: str) -> np.ndarray:
    if dtype == "float32":
        return np.asarray(tensor.float_data, dtype=np.float32)
    if dtype == "float64":
        return np.asarray(tensor.double_data, dtype=np.float64)
    if dtype in ("float16", "bfloat16"):
        # 16-bit floats are stored as their bit patterns in int32_data.
        bits = np.asarray(tensor.int32_data, dtype=np.int64)
        if np.any((bits < 0) | (bits > 0xFFFF)):
            raise ModelReadError(f"tensor {tensor.name!r} holds invalid 16-bit values")
        return tensor_bytes.decode(bits.astype("<u2").tobytes(), dtype)
    if dtype == "int64":
        return np.asarray(tensor.int64_data, dtype=np.int64)
    return np.asarray(tensor.int32_data, dtype=np.int64)


def external_bytes(tensor: Any, directory: Path) -> bytes:
    """The bytes of a tensor kept in an external file, from inside the model's directory only and
    checked against the tensor's shape and the file's size."""
    return ExternalReads(directory).read(tensor)


class ExternalReads:
    """Reads of external data for one model. Each file's ranges are read once; ranges that
    overlap without being equal may not add up to more than the file holds, so tensors that all
    name the same bytes cannot make bncheck decode them once per tensor."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.read_bytes: dict[Path, int] = {}
        self.ranges: dict[tuple[Path, int, int], bytes] = {}

    def read(self, tensor: Any) -> bytes:
        dtype, dims = _layout(tensor)
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        target = external_path(location, self.directory)
        size = target.stat().st_size
        expected = _count(tensor, dtype, dims, size) * tensor_bytes.itemsize(dtype)
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries.get("length", str(expected)))
        except ValueError:
            raise ModelReadError(
                f"tensor {tensor.name!r} has a non-numeric external offset"
            ) from None
        if length != expected or offset < 0:
            raise ModelReadError(
                f"tensor {tensor.name!r}: external length {length} at offset {offset}, its shape "
                f"needs {expected} bytes"
            )
        if offset + length > size:
            raise ModelReadError(f"tensor {tensor.name!r}: external range runs past {location!r}")
        key = (target, offset, length)
        if key not in self.ranges:
            total = self.read_bytes.get(target, 0) + length
            if total > size:
                raise ModelReadError(
                    f"tensor {tensor.name!r}: the tensors read from {location!r} overlap, "
                    f"{total} bytes from a file of {size}"
                )
            self.read_bytes[target] = total
            with open(target, "rb") as handle:
                handle.seek(offset)
                self.ranges[key] = handle.read(length)
        return self.ranges[key]


def external_path(location: str, directory: Path) -> Path:
    """The file an external-data ``location`` names, refused unless it lies inside the model's
    directory (no absolute paths, no ``..``, no symbolic link leading out)."""
    parts = Path(location).parts
    if not location or Path(location).is_absolute() or ".." in parts or "\\" in location:
        raise ModelReadError(
            f"external data location {location!r} is not inside the model's folder"
        )
    target = (directory / location).resolve()
    if directory not in target.parents or not target.is_file():
        raise ModelReadError(
            f"external data location {location!r} is not a file inside the model's folder"
        )
    return target
