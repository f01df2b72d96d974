"""Graphs that do more than compute: SavedModels whose serving function writes files, and ONNX
models with operators outside the standard domain or constants kept outside their folder.

Without ``--unsafe`` the probe must refuse each one before TensorFlow or onnxruntime sees it
(BN017 naming the op, exit 1) or say in one line that the file is unreadable (exit 3). Each
SavedModel's op would create ``CANARY`` (a file or a folder) in the case's folder if it ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.hardening.hostile import CANARY, HostileCase

#: TensorFlow alone takes about 1 GiB.
TF_RSS_MIB = 2500.0
#: The op each SavedModel case holds, which BN017 must name.
SAVEDMODEL_OPS = {
    "savedmodel-print-to-file": "PrintV2",
    "savedmodel-print-inside-cond": "PrintV2",
    "savedmodel-save-v2": "SaveV2",
    "savedmodel-write-file": "WriteFile",
    "savedmodel-summary-writer": "CreateSummaryFileWriter",
    "savedmodel-unknown-op": "BncheckUnheardOfOp",
}
#: The ONNX contrib op the custom-domain case runs (onnxruntime has it: it would run).
CONTRIB_OP = "com.microsoft.FusedMatMul"


def _probe(model: Path) -> list[str]:
    return ["inspect", str(model), "--probe", "--format", "json"]


def save_module(folder: Path, effect: Callable[[Any, Path], None]) -> Path:
    """A ``tf.Module`` SavedModel whose serving signature doubles its input after running
    ``effect(x, folder)``; tracing runs nothing, so nothing is written while saving."""
    import tensorflow as tf

    class Module(tf.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            effect(x, folder)
            return {"y": x * self.scale}

    module = Module()
    path = folder / "model"
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    return path


def _print_to_file(x: Any, folder: Path) -> None:
    import tensorflow as tf

    tf.print(x, output_stream=f"file://{folder / CANARY}")


def _print_inside_cond(x: Any, folder: Path) -> None:
    import tensorflow as tf

    def loud() -> Any:
        _print_to_file(x, folder)
        return tf.constant(1.0)

    tf.cond(tf.reduce_sum(x) > -1e30, loud, lambda: tf.constant(0.0))


def _save_v2(x: Any, folder: Path) -> None:
    import tensorflow as tf

    tf.raw_ops.SaveV2(
        prefix=str(folder / CANARY), tensor_names=["x"], shape_and_slices=[""], tensors=[x]
    )


def _write_file(x: Any, folder: Path) -> None:
    import tensorflow as tf

    tf.io.write_file(str(folder / CANARY), tf.strings.as_string(tf.reduce_sum(x)))


def _summary_writer(x: Any, folder: Path) -> None:
    import tensorflow as tf

    writer = tf.raw_ops.SummaryWriter(shared_name="", container="")
    tf.raw_ops.CreateSummaryFileWriter(
        writer=writer, logdir=str(folder / CANARY), max_queue=1, flush_millis=0,
        filename_suffix="",
    )  # fmt: skip
    tf.raw_ops.WriteScalarSummary(
        writer=writer, step=tf.constant(0, tf.int64), tag="x", value=tf.reduce_sum(x)
    )
    tf.raw_ops.FlushSummaryWriter(writer=writer)


def _nothing(x: Any, folder: Path) -> None:
    return None


def _savedmodel_case(effect: Callable[[Any, Path], None]) -> Callable[[Path], Sequence[str]]:
    return lambda folder: _probe(save_module(folder, effect))


def unknown_op(folder: Path) -> Sequence[str]:
    """A healthy module whose multiplication is renamed to an op nobody registered."""
    from tensorflow.core.protobuf import saved_model_pb2

    path = save_module(folder, _nothing)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    for function in saved.meta_graphs[0].graph_def.library.function:
        for node in function.node_def:
            if node.op == "Mul":
                node.op = SAVEDMODEL_OPS["savedmodel-unknown-op"]
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    return _probe(path)


def _onnx_model(folder: Path, nodes: list[Any], initializers: Sequence[Any] = ()) -> Path:
    """``y = f(x)`` over ``x`` of shape (N, 4), opset 17 with the contrib domain imported."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes,
        "hostile",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=list(initializers),
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    path = folder / "model" / "model.onnx"
    path.parent.mkdir()
    onnx.save(model, str(path))
    return path


def onnx_contrib_op(folder: Path) -> Sequence[str]:
    import numpy as np
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    domain, op = CONTRIB_OP.rsplit(".", 1)
    node = helper.make_node(op, ["x", "w"], ["y"], domain=domain, alpha=1.0)
    return _probe(_onnx_model(folder, [node], [weight]))


def external_constant(location: Callable[[Path], str]) -> Callable[[Path], Sequence[str]]:
    """A ``Constant`` node whose value lies in an external file at ``location(folder)``: a file
    outside the model's folder, which onnxruntime would read relative to its working
    directory."""

    def build(folder: Path) -> Sequence[str]:
        import numpy as np
        from onnx import TensorProto, helper

        (folder / "outside.bin").write_bytes(np.ones(4, np.float32).tobytes())
        value = TensorProto(
            name="c", data_type=TensorProto.FLOAT, dims=[4], data_location=TensorProto.EXTERNAL
        )
        for key, text in (("location", location(folder)), ("offset", "0"), ("length", "16")):
            value.external_data.add(key=key, value=text)
        nodes = [
            helper.make_node("Constant", [], ["c"], value=value),
            helper.make_node("Add", ["x", "c"], ["y"]),
        ]
        return _probe(_onnx_model(folder, nodes))

    return build


CASES: list[HostileCase] = [
    *(
        HostileCase(name, _savedmodel_case(effect), frozenset({1}), "tensorflow", TF_RSS_MIB)
        for name, effect in (
            ("savedmodel-print-to-file", _print_to_file),
            ("savedmodel-print-inside-cond", _print_inside_cond),
            ("savedmodel-save-v2", _save_v2),
            ("savedmodel-write-file", _write_file),
            ("savedmodel-summary-writer", _summary_writer),
        )
    ),
    HostileCase("savedmodel-unknown-op", unknown_op, frozenset({1}), "tensorflow", TF_RSS_MIB),
    HostileCase("onnx-contrib-domain-op", onnx_contrib_op, frozenset({1}), "onnxruntime"),
    HostileCase(
        "onnx-constant-external-data-up-a-level",
        external_constant(lambda folder: "../outside.bin"),
        frozenset({3}),
        "onnxruntime",
    ),
    HostileCase(
        "onnx-constant-external-data-absolute",
        external_constant(lambda folder: str(folder / "outside.bin")),
        frozenset({3}),
        "onnxruntime",
    ),
]
