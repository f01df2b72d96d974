"""A dataset that reshuffles on every pass gives the re-estimated sweep other batches than the
first sweep's: each is compared with its own outputs with the stored statistics, not with those
of the batch that came first at its place (which would count most predictions as changed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

from bncheck.probe.data import Batch
from bncheck.probe.measure import Measured, measure
from bncheck.probe.runtimes.onnx_model import OnnxRunner
from bncheck.readers.onnx import onnx_graph

SAMPLES, BATCH = 256, 32
RNG = np.random.default_rng(0)
#: Four features around their own means and scales, which the stored statistics describe.
X = (RNG.normal(size=(SAMPLES, 4)) * [1.0, 2.0, 0.5, 1.0] + [1.0, -2.0, 0.5, 3.0]).astype("f")


def classifier(path: Path) -> Path:
    """BatchNormalization with the data's own statistics, then three classes: a healthy model,
    whose re-estimated statistics change almost no prediction."""
    weights = RNG.normal(size=(4, 3)).astype("f") * 3
    constants = [
        numpy_helper.from_array(np.ones(4, "f"), "scale"),
        numpy_helper.from_array(np.zeros(4, "f"), "bias"),
        numpy_helper.from_array(X.mean(0).astype("f"), "mean"),
        numpy_helper.from_array(X.var(0).astype("f"), "var"),
        numpy_helper.from_array(weights, "weights"),
    ]
    nodes = [
        helper.make_node(
            "BatchNormalization", ["x", "scale", "bias", "mean", "var"], ["normal"], name="bn"
        ),
        helper.make_node("MatMul", ["normal", "weights"], ["y"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        constants,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def passes(reshuffle: bool) -> Callable[[], Iterator[Batch]]:
    """Every pass over the samples in batches: in one order, or in a new one each pass."""
    done = 0

    def batches() -> Iterator[Batch]:
        nonlocal done
        order = np.random.default_rng(done if reshuffle else 0).permutation(SAMPLES)
        done += 1
        for start in range(0, SAMPLES, BATCH):
            yield Batch([X[order[start : start + BATCH]]])

    return batches


def measured(path: Path, reshuffle: bool) -> Measured:
    with OnnxRunner(onnxruntime, onnx_graph.load(str(path)), path.parent) as runner:
        return measure(runner, passes(reshuffle), lambda _: True, {})


def test_a_reshuffling_dataset_is_compared_batch_by_batch(tmp_path: Path) -> None:
    path = classifier(tmp_path / "classifier.onnx")
    ordered, reshuffled = measured(path, False), measured(path, True)
    [same_order], [new_order] = ordered.outputs, reshuffled.outputs
    assert same_order.reestimated_top1_agreement is not None
    assert new_order.reestimated_top1_agreement is not None
    # Re-estimated statistics of a healthy model keep nearly every prediction, in either order;
    # set against the wrong samples, about a third of three classes would agree.
    assert same_order.reestimated_top1_agreement > 0.9
    assert new_order.reestimated_top1_agreement > 0.9
    assert not any("second pass" in note for note in ordered.notes)
    [note] = [note for note in reshuffled.notes if "second pass" in note]
    assert note.startswith(f"the data gave other batches on its second pass ({SAMPLES // BATCH} of")
