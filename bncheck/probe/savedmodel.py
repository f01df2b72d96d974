"""Running SavedModel directories with TensorFlow (``tf.saved_model.load``) for the probe.

A SavedModel holds TensorFlow graphs, not Python code, so loading one runs no Python from the
file; but a graph can call back into Python (``PyFunc``), print to any file (``PrintV2``), write
checkpoints, summaries and datasets, or read files. So before anything is loaded, every op of the
graph and of its function library is checked against an allowlist of pure ops (``pure_ops``),
without TensorFlow; anything else is reported like a Lambda layer in a Keras file (BN017), and
the probe runs only with ``--unsafe``.

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

TF_KERAS = "tf-keras SavedModel"
KERAS_EXPORT = "Keras export SavedModel"
SIGNATURE = "SavedModel serving signature"
#: Where a reference to a top-level graph node says it is.
GRAPH = "graph"
#: What each part of a graph may run: the saver's functions may also save or restore.
_PURE, _RESTORE, _SAVE = "pure", "restore", "save"
_ALLOWED = {
    _PURE: pure_ops.TF_PURE_OPS,
    _RESTORE: pure_ops.TF_PURE_OPS | pure_ops.TF_RESTORE_OPS,
    _SAVE: pure_ops.TF_PURE_OPS | pure_ops.TF_SAVE_OPS,
}


def scan_graph(path: str) -> tuple[CodeReference, ...]:
    """Every op in the SavedModel's graphs and functions that is not known to be pure, once per
    op name, without loading it (and without TensorFlow)."""
    found: dict[str, str] = {}
    for meta_graph in _read_graphs(Path(path)).meta_graphs:
        for where, op in _GraphScan(meta_graph).refused():
            found.setdefault(op, where)
    return tuple(CodeReference("graph-op", where, op) for op, where in found.items())


def _read_graphs(root: Path) -> Any:
    """``saved_model.pb`` (or, as TensorFlow falls back to it, ``saved_model.pbtxt``), parsed
    for its graphs: the file TensorFlow itself would load."""
    from google.protobuf import text_format

    from bncheck.readers.tf_protos import message_class

    message = message_class("GraphSavedModel")()
    binary, text = root / "saved_model.pb", root / "saved_model.pbtxt"
    try:
        if binary.is_file() or not text.is_file():
            message.ParseFromString(binary.read_bytes())
        else:
            text_format.Parse(text.read_text(encoding="utf-8"), message, allow_unknown_field=True)
    except Exception as exc:  # a corrupt protobuf may fail in several ways
        raise ModelReadError(f"unreadable saved_model.pb ({describe_error(exc)})") from None
    return message


class _GraphScan:
    """One MetaGraphDef's ops, judged where they can run.

    Top-level nodes and every library function must be pure, except the saver's: the nodes
    that ``saver_def`` names (and their inputs), and the functions only they call, may also
    save (the save function, which no loader runs) or restore (run by TF1 loaders on the
    SavedModel's own variables). A function or node reached from both is judged by both. Each
    node and function is visited once per kind of scope, so the scan is linear."""

    def __init__(self, meta_graph: Any) -> None:
        graph = meta_graph.graph_def
        self.functions = {function.signature.name: function for function in graph.library.function}
        self.nodes = {node.name: node for node in graph.node}
        saver = meta_graph.saver_def
        self.saver_nodes = {
            _SAVE: self._inputs_closure([_node_name(saver.save_tensor_name)]),
            _RESTORE: self._inputs_closure([_node_name(saver.restore_op_name)]),
        }
        self.found: dict[tuple[str, str], None] = {}
        self.visited: dict[str, set[str]] = {_PURE: set(), _RESTORE: set(), _SAVE: set()}

    def refused(self) -> Iterator[tuple[str, str]]:
        saver_only: set[str] = set()
        for scope, nodes in self.saver_nodes.items():
            self._walk(scope, [node for name in nodes if (node := self.nodes.get(name))])
            saver_only |= nodes
        pure_nodes = self._inputs_closure(name for name in self.nodes if name not in saver_only)
        saver_functions = self.visited[_SAVE] | self.visited[_RESTORE]
        self._walk(
            _PURE,
            [self.nodes[name] for name in pure_nodes if name in self.nodes],
            [name for name in self.functions if name not in saver_functions],
        )
        return iter(self.found)

    def _inputs_closure(self, roots: Iterable[str]) -> set[str]:
        """The named top-level nodes and every node they take an input from."""
        closure: set[str] = set()
        queue = [name for name in roots if name in self.nodes]
        closure.update(queue)
        while queue:
            for reference in self.nodes[queue.pop()].input:
                name = _node_name(reference)
                if name in self.nodes and name not in closure:
                    closure.add(name)
                    queue.append(name)
        return closure

    def _walk(self, scope: str, nodes: Sequence[Any], functions: Sequence[str] = ()) -> None:
        allowed, visited = _ALLOWED[scope], self.visited[scope]
        pending = [(GRAPH, node) for node in nodes]
        calls = list(functions)
        while pending or calls:
            if calls:
                name = calls.pop()
                if name in visited:
                    continue
                visited.add(name)
                pending.extend((name, node) for node in self.functions[name].node_def)
                continue
            where, node = pending.pop()
            for called in (node.op, *_called_functions(node)):
                if called in self.functions:
                    if called not in visited:
                        calls.append(called)
                elif called not in allowed:
                    self.found[(where, called)] = None


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
        if (Path(path) / "keras_metadata.pb").is_file() and _call_functions(self.restored):
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
