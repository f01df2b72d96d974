"""Graphs that do more than compute: SavedModels whose serving function writes files, and ONNX
models with operators outside the standard domain or constants kept outside their folder.

Without ``--unsafe`` the probe must refuse each one before TensorFlow or onnxruntime sees it
(BN017 naming the op, exit 1) or say in one line that the file is unreadable (exit 3). Each
SavedModel's op would create ``CANARY`` (a file or a folder) in the case's folder if it ran.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES
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
    "savedmodel-save-v2-laundered-through-saver": "SaveV2",
    "savedmodel-merge-checkpoints-laundered-through-saver": "MergeV2Checkpoints",
    "savedmodel-save-v2-swapped-in-by-the-implementation-selector": "SaveV2",
}
#: Empty nodes appended to a healthy ``saved_model.pb`` by the graph bomb: 2 bytes each on the
#: wire, many times that parsed.
BOMB_NODES = 5_000_000
#: The ONNX contrib op the custom-domain case runs (onnxruntime has it: it would run).
CONTRIB_OP = "com.microsoft.FusedMatMul"


def _probe(model: Path) -> list[str]:
    return ["inspect", str(model), "--probe", "--format", "json"]


def save_module(folder: Path, effect: Callable[[Any, Path], Any]) -> Path:
    """A ``tf.Module`` SavedModel whose serving signature doubles its input after running
    ``effect(x, folder)`` (and the op it returns, if any); tracing runs nothing, so nothing
    is written while saving."""
    import tensorflow as tf

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x: Any) -> Any:
            done = effect(x, folder)
            # An op without outputs (SaveV2) runs only as a control dependency of the result.
            with tf.control_dependencies([] if done is None else [done]):
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


def _save_v2(x: Any, folder: Path) -> Any:
    import tensorflow as tf

    return tf.raw_ops.SaveV2(
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


def _merge_checkpoints(x: Any, folder: Path) -> Any:
    """``MergeV2Checkpoints``, which renames checkpoint files and deletes their folders."""
    import tensorflow as tf

    return tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[str(folder / "model" / "variables" / "variables")],
        destination_prefix=str(folder / CANARY / "merged"),
        delete_old_dirs=True,
    )


def laundered_through_saver(
    effect: Callable[[Any, Path], Any],
) -> Callable[[Path], Sequence[str]]:
    """A module whose serving function runs ``effect``, with every top-level call node made a
    control input of the saver's save node: a scan that judged the save node's inputs (and the
    functions they call) as the saver's, free to save, would let the serving function write.
    ``tf.saved_model.load`` runs no top-level node: it runs the serving function from the
    object graph."""

    def build(folder: Path) -> Sequence[str]:
        from tensorflow.core.protobuf import saved_model_pb2

        path = save_module(folder, effect)
        saved = saved_model_pb2.SavedModel()
        saved.ParseFromString((path / "saved_model.pb").read_bytes())
        meta = saved.meta_graphs[0]
        saver_nodes = {
            meta.saver_def.save_tensor_name.split(":")[0],
            meta.saver_def.restore_op_name.split(":")[0],
        }
        nodes = {node.name: node for node in meta.graph_def.node}
        save_node = nodes[meta.saver_def.save_tensor_name.split(":")[0]]
        for node in meta.graph_def.node:
            if node.name not in saver_nodes and node.op.endswith("PartitionedCall"):
                save_node.input.append(f"^{node.name}")
        (path / "saved_model.pb").write_bytes(saved.SerializeToString())
        return _probe(path)

    return build


def implementation_swap(folder: Path) -> Sequence[str]:
    """A module whose serving function calls a pure function tagged as one implementation of an
    interface (``api_implements``, preferred on GPU), with a second implementation (preferred on
    CPU) that also saves a checkpoint, named only by an attribute of the saver's save node. A
    scan that judged the second function the saver's would let it run: TensorFlow's graph
    optimiser swaps the serving call for it on a CPU."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    spec = tf.TensorSpec([None, 4], tf.float32)
    interface = {"api_implements": "bncheck_hostile_double"}

    @tf.function(experimental_attributes={**interface, "api_preferred_device": "GPU"})
    def double(x: Any) -> Any:
        return x * 2.0

    @tf.function(experimental_attributes={**interface, "api_preferred_device": "CPU"})
    def double_and_save(x: Any) -> Any:
        with tf.control_dependencies([_save_v2(x, folder)]):
            return tf.identity(x * 2.0)

    class Module(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(1.0)

        @tf.function(input_signature=[spec])
        def __call__(self, x: Any) -> Any:
            return {"y": double(x) * self.scale}

    module = Module()
    path = folder / "model"
    tf.saved_model.save(module, str(path), signatures=module.__call__)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((path / "saved_model.pb").read_bytes())
    meta = saved.meta_graphs[0]
    swapped = double_and_save.get_concrete_function(spec).function_def
    meta.graph_def.library.function.add().CopyFrom(swapped)
    save_node = next(
        node
        for node in meta.graph_def.node
        if node.name == meta.saver_def.save_tensor_name.split(":")[0]
    )
    save_node.attr["_extra"].func.name = swapped.signature.name
    (path / "saved_model.pb").write_bytes(saved.SerializeToString())
    return _probe(path)


def graph_bomb(folder: Path) -> Sequence[str]:
    """A healthy Keras export whose ``saved_model.pb`` gains a second meta graph of
    ``BOMB_NODES`` empty nodes: 10 MB on disk, over 100 bytes each once parsed."""
    path = folder / "model"
    shutil.copytree(FIXTURES / "checkpoints" / "keras3_export", path)
    nodes = b"\x0a\x00" * BOMB_NODES  # GraphDef.node (1): an empty NodeDef
    graph = b"\x12" + _varint(len(nodes)) + nodes  # MetaGraphDef.graph_def (2)
    with (path / "saved_model.pb").open("ab") as handle:
        handle.write(b"\x12" + _varint(len(graph)) + graph)  # SavedModel.meta_graphs (2)
    return _probe(path)


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        out.append(low | (0x80 if number else 0))
        if not number:
            return bytes(out)


def _nothing(x: Any, folder: Path) -> None:
    return None


def _savedmodel_case(effect: Callable[[Any, Path], Any]) -> Callable[[Path], Sequence[str]]:
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
    *(
        HostileCase(name, laundered_through_saver(effect), frozenset({1}), "tensorflow", TF_RSS_MIB)
        for name, effect in (
            ("savedmodel-save-v2-laundered-through-saver", _save_v2),
            ("savedmodel-merge-checkpoints-laundered-through-saver", _merge_checkpoints),
        )
    ),
    HostileCase(
        "savedmodel-save-v2-swapped-in-by-the-implementation-selector",
        implementation_swap,
        frozenset({1}),
        "tensorflow",
        TF_RSS_MIB,
    ),
    HostileCase("savedmodel-graph-bomb", graph_bomb, frozenset({3}), "tensorflow", TF_RSS_MIB),
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
