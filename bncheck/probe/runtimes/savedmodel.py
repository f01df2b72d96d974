"""Running SavedModel directories with TensorFlow (``tf.saved_model.load``) for the probe.

A SavedModel holds TensorFlow graphs, not Python code, so loading one runs no Python from the
file; but a graph can call back into Python (``PyFunc``), print to any file (``PrintV2``), write
checkpoints, summaries and datasets, or read files. So before anything is loaded, the ops that
TensorFlow's loader may run are checked against an allowlist of pure ops (``pure_ops``),
without TensorFlow; anything else is reported like a Lambda layer in a Keras file (BN017), and
the probe runs only with ``--unsafe``.

What the loader may run decides what is checked, never the edges of the graph, which the file's
author chooses. ``tf.saved_model.load`` (``tensorflow/python/saved_model/load.py``,
``load_partial``) takes one of two paths:

- **A SavedModel of one meta graph with an object graph** (``object_graph_def``: everything
  ``tf.saved_model.save``, Keras 3's ``export`` and tf-keras write) goes to ``Loader``. It
  imports every function of the library without running any, builds the objects of the object
  graph, and restores the variables from ``variables/`` with ops of its own
  (``TrackableSaver.restore``), calling the restore functions of saveable objects and the
  initialisers of resources, which are functions the object graph names. It never runs the
  graph's top-level nodes (it reads attributes of the ``Const`` nodes that saved constants
  name) nor the functions ``saver_def`` names. What it and the probe may run is therefore the
  concrete functions the object graph names (``concrete_functions``, a function's or a bare
  concrete function's, a captured tensor's), the signatures among them, and every function
  they call through an attribute, nested ones included. So every library function must be
  pure, and so must every top-level node, with a single exception: the functions that only
  the saver's two nodes call (its save and restore functions), named by nothing else -- no
  object, no gradient, no other node and no other function -- may also save and restore
  checkpoints (``SaveV2``, ``RestoreV2``, ...), since this loader never runs them. The saver
  functions are found from the attributes of exactly the nodes ``saver_def`` names, not from
  their inputs: no edge added to the graph widens them, and a function both the saver and
  anything else call is judged pure.
- **Anything else** (a TF1 SavedModel: no object graph, or several meta graphs) goes to
  ``load_v1_in_v2``, which runs top-level nodes: the saver's restore op, the init and main ops
  that collections and signatures name, table initialisers, and the subgraphs signatures
  fetch. Which nodes those are depends on edges and collections the file's author writes,
  and every TF1 saver holds ``SaveV2`` among them; rather than trust that reckoning, bncheck
  does not run a TF1 SavedModel without ``--unsafe`` (BN017 says so).

Before any of this, ``saved_model.pb`` is sized and its fields are counted on the wire, so a
small file of millions of empty messages is refused in one line before it is parsed.

What a restored SavedModel can do depends on who wrote it:

- tf-keras (``model.save("dir")``) restores a callable taking ``training``, so both modes run;
  every layer switches mode, Dropout included.
- Keras 3 (``model.export("dir")``) exports the inference endpoint ``serve`` only.
- Anything else (``tf.saved_model.save`` of a ``tf.Module``) is probed through its
  ``serving_default`` signature, in inference mode.

Layers are not visible from outside the graph, so the probe measures outputs only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.probe import pure_ops
from bncheck.probe.data import InputSpec
from bncheck.probe.foreign import describe_error
from bncheck.probe.results import CodeReference
from bncheck.readers.tensorflow.checkpoint import MAX_OBJECT_GRAPH_BYTES
from bncheck.readers.tensorflow.tf_graph import MAX_GRAPH_BYTES, MAX_GRAPH_NODES

TF_KERAS = "tf-keras SavedModel"
KERAS_EXPORT = "Keras export SavedModel"
SIGNATURE = "SavedModel serving signature"
KERAS_METADATA = "keras_metadata.pb"
#: Where a reference to a top-level graph node says it is.
GRAPH = "graph"
#: What a TF1 SavedModel is refused as: its loader runs top-level nodes.
TF1_GRAPH = "TF1 graph (its loader runs the graph's restore and init ops)"
#: Most fields of ``saved_model.pb`` read, nested ones and packed numbers included: a parsed
#: field costs many times its bytes, so a small file of many empty fields is refused unparsed.
MAX_GRAPH_FIELDS = 1 << 22
#: Deepest nesting of messages read (the protobuf parser's own limit).
_MAX_DEPTH = 100
_PURE_OPS = pure_ops.TF_PURE_OPS
_SAVER_OPS = pure_ops.TF_PURE_OPS | pure_ops.TF_SAVE_OPS | pure_ops.TF_RESTORE_OPS


def scan_graph(path: str) -> tuple[CodeReference, ...]:
    """Every op that ``tf.saved_model.load`` and the probe may run from the SavedModel and
    that is not known to be pure, once per op name, without loading it (and without
    TensorFlow); a TF1 SavedModel, whose loader runs top-level nodes, as one reference."""
    saved_model = _read_graphs(Path(path))
    meta_graphs = saved_model.meta_graphs
    if len(meta_graphs) != 1 or not meta_graphs[0].HasField("object_graph_def"):
        return (CodeReference("graph-op", "saved_model.pb", TF1_GRAPH),)
    found: dict[str, str] = {}
    for where, op in _GraphScan(meta_graphs[0]).refused():
        found.setdefault(op, where)
    return tuple(CodeReference("graph-op", where, op) for op, where in found.items())


def _read_graphs(root: Path) -> Any:
    """``saved_model.pb`` (or, as TensorFlow falls back to it, ``saved_model.pbtxt``), parsed
    for its graphs: the file TensorFlow itself would load. Its size and its fields are checked
    first, on the wire (or, for text, by counting the characters that open a field)."""
    from google.protobuf import text_format

    from bncheck.readers.tensorflow.tf_protos import message_class

    message = message_class("GraphSavedModel")()
    binary, text = root / "saved_model.pb", root / "saved_model.pbtxt"
    try:
        if binary.is_file() or not text.is_file():
            _check_size(binary, MAX_GRAPH_BYTES)
            data = binary.read_bytes()
            _check_fields(data, message.DESCRIPTOR)
            message.ParseFromString(data)
        else:
            _check_size(text, MAX_OBJECT_GRAPH_BYTES)
            content = text.read_text(encoding="utf-8")
            # Every field of the text format holds one of these, once at least.
            if sum(content.count(mark) for mark in ":{<,") > MAX_GRAPH_FIELDS:
                raise ModelReadError(f"{text.name} holds more than {MAX_GRAPH_FIELDS} fields")
            text_format.Parse(content, message, allow_unknown_field=True)
    except ModelReadError:
        raise
    except Exception as exc:  # a corrupt protobuf may fail in several ways
        raise ModelReadError(f"unreadable saved_model.pb ({describe_error(exc)})") from None
    return message


def _check_size(path: Path, limit: int) -> None:
    size = path.stat().st_size
    if size > limit:
        raise ModelReadError(
            f"{path.name} is {size} bytes, more than the {limit >> 20} MiB whose ops bncheck "
            "checks before a probe"
        )


def _check_fields(data: bytes, descriptor: Any) -> None:
    """Walk the message's wire format as the parser will, through the fields ``descriptor``
    declares, and refuse it (one line) past ``MAX_GRAPH_FIELDS`` fields or
    ``MAX_GRAPH_NODES`` nodes and functions, before anything is parsed."""
    from bncheck.readers.tensorflow.tf_protos import WireError, _varint

    counts = {"fields": 0, "nodes and functions": 0}
    limits = {"fields": MAX_GRAPH_FIELDS, "nodes and functions": MAX_GRAPH_NODES}

    def count(what: str, more: int = 1) -> None:
        counts[what] += more
        if counts[what] > limits[what]:
            raise ModelReadError(f"saved_model.pb holds more than {limits[what]} {what}")

    pending = [(memoryview(data), descriptor, 0)]
    while pending:
        view, message, depth = pending.pop()
        if depth > _MAX_DEPTH:
            raise ModelReadError(f"saved_model.pb nests messages more than {_MAX_DEPTH} deep")
        position = 0
        while position < len(view):
            count("fields")
            tag, position = _varint(view, position)
            wire_type = tag & 7
            if wire_type == 0:
                _, position = _varint(view, position)
            elif wire_type in (1, 5):
                position += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length, position = _varint(view, position)
                end = position + length
                field = message.fields_by_number.get(tag >> 3)
                if end <= len(view) and field is not None:
                    if field.message_type is not None:
                        if field.message_type.name in ("NodeDef", "FunctionDef"):
                            count("nodes and functions")
                        pending.append((view[position:end], field.message_type, depth + 1))
                    elif field.type not in (field.TYPE_STRING, field.TYPE_BYTES):
                        count("fields", length)  # packed numbers: one or more bytes each
                position = end
            else:
                raise WireError(f"wire type {wire_type}")
            if position > len(view):
                raise WireError("a field runs past the end")


class _GraphScan:
    """The ops of one object-based meta graph that its loader or the probe may run.

    Every top-level node and every library function must be pure, except the saver-only
    functions: those called (through attributes, nested) from the two nodes ``saver_def``
    names, and from nothing else the loader or another node or function could reach. They may
    also save and restore. A function is judged once, in one scope, so the scan is linear."""

    def __init__(self, meta_graph: Any) -> None:
        graph = meta_graph.graph_def
        self.functions = {function.signature.name: function for function in graph.library.function}
        self.nodes = list(graph.node)
        saver = meta_graph.saver_def
        self.saver_nodes = {
            _node_name(saver.save_tensor_name),
            _node_name(saver.restore_op_name),
        } - {""}
        self.interfaces: dict[str, list[str]] = {}
        for name, function in self.functions.items():
            interface = _interface(function)
            if interface:
                self.interfaces.setdefault(interface, []).append(name)
        self.object_graph = meta_graph.object_graph_def
        self.gradients = graph.library
        self.found: dict[tuple[str, str], None] = {}

    def refused(self) -> Iterator[tuple[str, str]]:
        saver_calls: list[str] = []
        other_calls: list[str] = list(self._loader_functions())
        for node in self.nodes:
            if node.name in self.saver_nodes:
                saver_calls.extend(_called_functions(node))
                self._check(GRAPH, node.op, _PURE_OPS)
            else:
                other_calls.extend(_called_functions(node))
                for called in (node.op, *_called_functions(node)):
                    self._check(GRAPH, called, _PURE_OPS)
        saver_reach = self._reachable(saver_calls)
        other_calls.extend(name for name in self.functions if name not in saver_reach)
        # A function TensorFlow may run in place of another (its graph optimiser swaps a call
        # for any function implementing the same interface) is never the saver's alone.
        other_calls.extend(name for name in self.functions if _interface(self.functions[name]))
        saver_only = saver_reach - self._reachable(other_calls)
        for name, function in self.functions.items():
            allowed = _SAVER_OPS if name in saver_only else _PURE_OPS
            for node in function.node_def:
                for called in (node.op, *_called_functions(node)):
                    self._check(name, called, allowed)
        return iter(self.found)

    def _loader_functions(self) -> Iterator[str]:
        """Every function the object graph names (which the loader may run), and every
        gradient function (which differentiation may run)."""
        graph = self.object_graph
        yield from (entry.key for entry in graph.concrete_functions)
        for saved in graph.nodes:
            yield from saved.function.concrete_functions
            yield saved.bare_concrete_function.concrete_function_name
            yield saved.captured_tensor.concrete_function
        yield from (gradient.gradient_func for gradient in self.gradients.gradient)
        yield from (gradient.gradient_func for gradient in self.gradients.registered_gradients)

    def _reachable(self, roots: Iterable[str]) -> set[str]:
        """The library functions named by ``roots``, and every function they call."""
        reached: set[str] = set()
        queue = [name for name in roots if name in self.functions]
        while queue:
            name = queue.pop()
            if name in reached:
                continue
            reached.add(name)
            interface = _interface(self.functions[name])
            if interface:
                queue.extend(self.interfaces.get(interface, ()))
            for node in self.functions[name].node_def:
                for called in (node.op, *_called_functions(node)):
                    if called in self.functions and called not in reached:
                        queue.append(called)
        return reached

    def _check(self, where: str, called: str, allowed: frozenset[str]) -> None:
        """A call naming a library function is judged with that function; a call naming an
        op (a node's op, or an attribute naming a registered op) must be allowed."""
        if called not in self.functions and called not in allowed:
            self.found[(where, called)] = None


#: Function attributes by which TensorFlow's graph optimiser may run one function in place of
#: another: its implementation selector swaps a call for any library function with the same
#: ``api_implements`` (as Keras 2 chose its recurrent kernels by device).
_INTERFACES = ("api_implements", "_implements")


def _interface(function: Any) -> str:
    """The interfaces ``function`` says it implements, one string; empty when none."""
    named = sorted(
        f"{entry.key}={entry.value.s!r}{entry.value.func.name}"
        for entry in function.attr
        if entry.key in _INTERFACES
    )
    return ";".join(named)


def _called_functions(node: Any) -> Iterator[str]:
    """The functions a node's attributes name (``f``, ``then_branch``, ``body``, ``branches``),
    nested ones included."""
    stack = [entry.value for entry in node.attr]
    while stack:
        value = stack.pop()
        functions = [value.func] if value.HasField("func") else []
        functions.extend(value.list.func)
        for function in functions:
            yield function.name
            stack.extend(entry.value for entry in function.attr)


def _node_name(reference: str) -> str:
    """``name`` from a tensor or control reference: ``name:0``, ``^name``."""
    return reference.lstrip("^").split(":", 1)[0]


class SavedModelSubject:
    """A restored SavedModel and how to call it."""

    def __init__(self, path: str) -> None:
        import tensorflow as tf

        try:
            self.restored = tf.saved_model.load(path)
        except Exception as exc:  # TensorFlow raises many kinds; the user needs one line
            raise ModelReadError(
                f"TensorFlow cannot load the SavedModel ({describe_error(exc)})"
            ) from None
        if (Path(path) / KERAS_METADATA).is_file() and _call_functions(self.restored):
            self.loader = TF_KERAS
            self._endpoint = _call_functions(self.restored)[0]
            self._structure = self._endpoint.structured_input_signature[0][0]
        elif hasattr(self.restored, "serve"):
            self.loader = KERAS_EXPORT
            self._endpoint = self.restored.serve.concrete_functions[0]
            self._structure = self._endpoint.structured_input_signature[0]
        elif "serving_default" in getattr(self.restored, "signatures", {}):
            self.loader = SIGNATURE
            self._endpoint = self.restored.signatures["serving_default"]
            self._structure = self._endpoint.structured_input_signature[1]
        else:
            raise ModelReadError(
                "the SavedModel has no endpoint bncheck can run (a Keras model, a Keras export's "
                "serve, or a serving_default signature)"
            )
        self.specs = [_spec(spec) for spec in tf.nest.flatten(self._structure)]

    @property
    def can_train(self) -> bool:
        return self.loader == TF_KERAS

    @property
    def variables(self) -> list[Any]:
        """The variables the endpoint may change: a restored Keras model lists its own; a plain
        ``tf.Module`` keeps no list, so the endpoint's captured variables are taken."""
        own = getattr(self.restored, "variables", None)
        return list(own if own is not None else self._endpoint.variables)

    def run(self, batch: Sequence[np.ndarray], training: bool) -> list[tuple[str, np.ndarray]]:
        import tensorflow as tf

        packed = tf.nest.pack_sequence_as(self._structure, [tf.constant(a) for a in batch])
        if self.loader == TF_KERAS:
            outputs = self.restored(packed, training=training)
        elif self.loader == KERAS_EXPORT:
            outputs = self.restored.serve(*packed)
        else:
            outputs = self.restored.signatures["serving_default"](**packed)
        if isinstance(outputs, dict):
            return [(str(name), np.asarray(outputs[name])) for name in sorted(outputs)]
        flat = tf.nest.flatten(outputs)
        return [(f"output_{index}", np.asarray(value)) for index, value in enumerate(flat)]


def _call_functions(restored: Any) -> list[Any]:
    call = restored.__call__ if callable(restored) else None
    return list(getattr(call, "concrete_functions", []) or [])


def _spec(spec: Any) -> InputSpec:
    return InputSpec(
        name=str(spec.name or "input"),
        shape=tuple(spec.shape.as_list()),
        dtype=str(np.dtype(spec.dtype.as_numpy_dtype)),
    )
