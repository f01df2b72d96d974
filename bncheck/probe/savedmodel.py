"""Running SavedModel directories with TensorFlow (``tf.saved_model.load``) for the probe.

A SavedModel holds TensorFlow graphs, not Python code, so loading one runs no Python from the
file; but a graph can call back into Python (``PyFunc``) or read and write files. Those ops are
reported before anything is loaded, like Lambda layers in Keras files.

What a restored SavedModel can do depends on who wrote it:

- tf-keras (``model.save("dir")``) restores a callable taking ``training``, so both modes run;
  every layer switches mode, Dropout included.
- Keras 3 (``model.export("dir")``) exports the inference endpoint ``serve`` only.
- Anything else is probed through its ``serving_default`` signature, in inference mode.

Layers are not visible from outside the graph, so the probe measures outputs only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bncheck.errors import ModelReadError
from bncheck.probe.data import InputSpec
from bncheck.probe.keras_model import describe_error
from bncheck.probe.results import CodeReference

#: Graph ops that call Python or touch the file system.
UNSAFE_OPS = frozenset(
    {"PyFunc", "PyFuncStateless", "EagerPyFunc", "ReadFile", "WriteFile", "MatchingFiles"}
)

TF_KERAS = "tf-keras SavedModel"
KERAS_EXPORT = "Keras export SavedModel"
SIGNATURE = "SavedModel serving signature"


def scan_graph(path: str) -> tuple[CodeReference, ...]:
    """Unsafe ops anywhere in the SavedModel's graphs and functions, without loading it."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except Exception as exc:  # a corrupt protobuf may fail in several ways
        raise ModelReadError(f"unreadable saved_model.pb ({describe_error(exc)})") from None
    found: dict[tuple[str, str], None] = {}
    for meta_graph in proto.meta_graphs:
        graph = meta_graph.graph_def
        for node in graph.node:
            if node.op in UNSAFE_OPS:
                found[("graph", node.op)] = None
        for function in graph.library.function:
            for node in function.node_def:
                if node.op in UNSAFE_OPS:
                    found[(function.signature.name, node.op)] = None
    return tuple(CodeReference("graph-op", where, op) for where, op in found)


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
            self._structure = _call_functions(self.restored)[0].structured_input_signature[0][0]
        elif hasattr(self.restored, "serve"):
            self.loader = KERAS_EXPORT
            self._structure = self.restored.serve.concrete_functions[0].structured_input_signature[
                0
            ]
        elif "serving_default" in getattr(self.restored, "signatures", {}):
            self.loader = SIGNATURE
            self._structure = self.restored.signatures[
                "serving_default"
            ].structured_input_signature[1]
        else:
            raise ModelReadError("the SavedModel has no callable endpoint bncheck can run")
        self.specs = [_spec(spec) for spec in tf.nest.flatten(self._structure)]

    @property
    def can_train(self) -> bool:
        return self.loader == TF_KERAS

    @property
    def variables(self) -> list[Any]:
        return list(self.restored.variables)

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
