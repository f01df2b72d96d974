"""Finding batch normalisation computed op by op in TensorFlow graphs, without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest

from bncheck.readers import read_model
from bncheck.readers.tensorflow import tf_graph
from bncheck.readers.tensorflow.tf_protos import message_class

CHECKPOINTS = Path(__file__).resolve().parent.parent / "fixtures" / "checkpoints"


def test_the_seed_layer_is_found_in_its_checkpoint_graph_and_the_2d_one_is_not() -> None:
    description = read_model(str(CHECKPOINTS / "tf1_seed002_by_hand"))
    [moments] = description.batch_moments
    assert (moments.function, moments.scope, moments.axes) == ("", "bn1", (0, 1, 2))


@pytest.mark.parametrize(
    "fixture", ["tf1_seed002_fused", "tfkeras_savedmodel", "keras3_export", "tf1_saver_all"]
)
def test_fused_kernels_inference_graphs_and_checkpoints_without_a_graph_have_none(
    fixture: str,
) -> None:
    assert read_model(str(CHECKPOINTS / fixture)).batch_moments == ()


def graph_file(tmp_path: Path, *nodes: tuple[str, str, list[str], list[int] | None]) -> Path:
    """A ``.meta`` file of the given nodes: (name, op, inputs, axes of a Const or None)."""
    meta = message_class("GraphMetaGraphDef")()
    for name, op, inputs, axes in nodes:
        node = meta.graph_def.node.add(name=name, op=op, input=inputs)
        if axes is not None:
            entry = node.attr.add(key="value")
            entry.value.tensor.dtype = 3
            entry.value.tensor.tensor_shape.dim.add(size=len(axes))
            entry.value.tensor.int_val.extend(axes)
    path = tmp_path / "model.ckpt.meta"
    path.write_bytes(meta.SerializeToString())
    return path


def moments_graph(tmp_path: Path, axes: list[int]) -> Path:
    return graph_file(
        tmp_path,
        ("x", "Placeholder", [], None),
        ("n/moments/mean/reduction_indices", "Const", [], axes),
        ("n/moments/mean", "Mean", ["x", "n/moments/mean/reduction_indices"], None),
        ("n/moments/SquaredDifference", "SquaredDifference", ["x", "n/moments/mean"], None),
        ("n/moments/variance/reduction_indices", "Const", [], axes),
        (
            "n/moments/variance",
            "Mean",
            ["n/moments/SquaredDifference", "n/moments/variance/reduction_indices:0"],
            None,
        ),
    )


def test_batch_moments_need_the_batch_axis_and_a_4d_input(tmp_path: Path) -> None:
    [found] = tf_graph.batch_moments(moments_graph(tmp_path, [0, 2, 3]), saved_model=False)
    assert (found.scope, found.axes) == ("n", (0, 2, 3))
    # Layer normalisation over the features, and moments over one image's pixels, are not
    # what the fused kernel computes.
    assert tf_graph.batch_moments(moments_graph(tmp_path, [1, 2, 3]), saved_model=False) == ()
    assert tf_graph.batch_moments(moments_graph(tmp_path, [0]), saved_model=False) == ()


def test_tf_keras_traces_of_one_layer_call_are_one_place() -> None:
    assert (
        tf_graph._function_name(
            "__inference_batch_normalization_layer_call_and_return_conditional_losses_458"
        )
        == "the call of layer batch_normalization"
    )
    assert tf_graph._function_name("__inference_train_step_91") == "function train_step"


def test_an_unreadable_graph_is_no_evidence_and_no_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "model.ckpt.meta"
    corrupt.write_bytes(b"\xff\xff\xff not a protocol buffer")
    assert tf_graph.batch_moments(corrupt, saved_model=False) == ()
    assert tf_graph.batch_moments(tmp_path / "absent.meta", saved_model=False) == ()
