"""Finding BatchNorm layers among checkpoint variables and matching them to a model's layers.

Pure name logic: no TensorFlow, no files.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bncheck.matching import match_layers
from bncheck.model import BNLayer, CheckpointContents
from bncheck.readers.tensorflow.checkpoint_layout import (
    GraphVariable,
    depth_first,
    looks_like_batchnorm,
    name_scope_groups,
    object_graph_groups,
)
from bncheck.rules import bn020_matched_by_position as bn020
from tests.rules.conftest import checkpoint_group

VALUE = "/.ATTRIBUTES/VARIABLE_VALUE"


def shapes_of(*keys: str, channels: int = 4) -> dict[str, list[int]]:
    return {key: [channels] for key in keys}


@pytest.mark.parametrize(
    "scope",
    [
        "bn1",
        "conv1_bn",
        "BN0",
        "conv1-BN",
        "bn_Conv1",
        "BatchNorm",
        "batch_normalization_3",
        "net/sync_batch_normalization",
        "batchnorm",
        "BatchNormV2",
    ],
)
def test_batchnorm_names(scope: str) -> None:
    assert looks_like_batchnorm(scope)


@pytest.mark.parametrize(
    "scope", ["layer_normalization", "LayerNorm", "bn/LayerNorm", "ln", "abnormal", "cbn_gate_x"]
)
def test_other_names(scope: str) -> None:
    assert not looks_like_batchnorm(scope)


def test_tf1_name_scopes_skip_optimizer_slots_and_other_variables() -> None:
    shapes = shapes_of(
        "conv10/BatchNorm/beta",
        "conv10/BatchNorm/moving_mean",
        "conv10/BatchNorm/moving_variance",
        "conv2/BatchNorm/beta",
        "conv2/BatchNorm/beta/Adam",
        "conv2/BatchNorm/beta/Adam_1",
        "conv2/BatchNorm/moving_mean",
        "conv2/BatchNorm/moving_mean/ExponentialMovingAverage",
        "conv2/BatchNorm/moving_variance",
        "fc/bn/gamma",
        "fc/bn/beta",
        "fc/bn/moving_mean",
        "fc/bn/moving_var",
        "conv2/weights",
        "global_step",
    )
    groups = name_scope_groups(shapes)
    assert [g.path for g in groups] == ["conv2/BatchNorm", "conv10/BatchNorm", "fc/bn"]
    assert dict(groups[0].keys) == {
        "beta": "conv2/BatchNorm/beta",
        "moving_mean": "conv2/BatchNorm/moving_mean",
        "moving_variance": "conv2/BatchNorm/moving_variance",
    }
    assert groups[2].keys["moving_variance"] == "fc/bn/moving_var"
    assert {g.found_by for g in groups} == {"name scope"}


def test_the_tutorial_spelling_scale_pop_mean_pop_var_is_batchnorm() -> None:
    shapes = shapes_of(
        "layer1/scale", "layer1/beta", "layer1/pop_mean", "layer1/pop_var", "layer1/w",
        "norm/scale", "norm/bias",
    )  # fmt: skip
    [group] = name_scope_groups(shapes)
    assert dict(group.keys) == {
        "gamma": "layer1/scale",
        "beta": "layer1/beta",
        "moving_mean": "layer1/pop_mean",
        "moving_variance": "layer1/pop_var",
    }


def test_trainable_only_scopes_count_when_named_like_batchnorm() -> None:
    shapes = shapes_of(
        "conv1/BatchNorm/beta",
        "block/bn/gamma",
        "block/bn/beta",
        "encoder/LayerNorm/gamma",
        "encoder/LayerNorm/beta",
    )
    groups = name_scope_groups(shapes)
    assert [g.path for g in groups] == ["block/bn", "conv1/BatchNorm"]
    assert groups[1].missing_moving_stats == ("moving_mean", "moving_variance")


def keras3_like_variables() -> list[GraphVariable]:
    """As tf.train.Checkpoint(model=keras3_model, optimizer=...) saves them: a nested layer's
    gamma is reached first through the optimizer's variable list."""
    return [
        GraphVariable("model/_operations/2/gamma" + VALUE, "conv1_bn/gamma"),
        GraphVariable("model/_operations/2/beta" + VALUE, "conv1_bn/beta"),
        GraphVariable("model/_operations/2/moving_mean" + VALUE, "conv1_bn/moving_mean"),
        GraphVariable("model/_operations/2/moving_variance" + VALUE, "conv1_bn/moving_variance"),
        GraphVariable("model/optimizer/_trainable_variables/5" + VALUE, "block/bn/gamma"),
        GraphVariable("model/optimizer/_trainable_variables/6" + VALUE, "block/bn/beta"),
        GraphVariable("model/_operations/4/_layers/1/moving_mean" + VALUE, "block/bn/moving_mean"),
        GraphVariable(
            "model/_operations/4/_layers/1/moving_variance" + VALUE, "block/bn/moving_variance"
        ),
        GraphVariable("model/optimizer/_variables/4" + VALUE, "adam/conv1_bn_gamma_momentum"),
    ]


def test_object_checkpoint_prefers_the_variables_own_names() -> None:
    variables = keras3_like_variables()
    groups = object_graph_groups(variables, shapes_of(*(v.key for v in variables)))
    assert [g.path for g in groups] == ["conv1_bn", "block/bn"]
    assert {g.found_by for g in groups} == {"variable names"}
    assert groups[1].keys["gamma"] == "model/optimizer/_trainable_variables/5" + VALUE
    assert groups[1].missing_moving_stats == ()
    assert groups[0].aliases == ("model/_operations/2",)
    assert groups[1].aliases == ("model/_operations/4/_layers/1",)


def test_optimizer_copies_named_after_a_layer_are_not_layers() -> None:
    """tf.keras names Adam's slots after the variable: Adam/m/bn1/gamma."""
    variables = [
        GraphVariable(f"model/layer_with_weights-1/{name}" + VALUE, f"bn1/{name}")
        for name in ("gamma", "beta", "moving_mean", "moving_variance")
    ] + [
        GraphVariable(f"optimizer/_variables/{i}" + VALUE, f"Adam/{slot}/bn1/{name}")
        for i, (slot, name) in enumerate([("m", "gamma"), ("v", "gamma"), ("m", "beta")])
    ]
    groups = object_graph_groups(variables, shapes_of(*(v.key for v in variables)))
    assert [g.path for g in groups] == ["bn1"]


def test_unscoped_names_fall_back_to_object_paths() -> None:
    """A tf.Module whose variables are named just "gamma", "moving_mean", ..."""
    variables = [
        GraphVariable(f"bn/{name}" + VALUE, name)
        for name in ("gamma", "beta", "moving_mean", "moving_variance")
    ] + [GraphVariable("head/gamma" + VALUE, "gamma"), GraphVariable("head/beta" + VALUE, "beta")]
    groups = object_graph_groups(variables, shapes_of(*(v.key for v in variables)))
    assert [(g.path, g.found_by) for g in groups] == [("bn", "object graph")]


def test_depth_first_follows_tracking_order_and_rejects_dangling_children() -> None:
    def node(*children: int) -> SimpleNamespace:
        return SimpleNamespace(children=[SimpleNamespace(node_id=c) for c in children])

    graph = SimpleNamespace(nodes=[node(1, 3), node(2), node(3), node()])
    assert list(depth_first(graph)) == [0, 1, 2, 3]
    with pytest.raises(Exception, match="refers to a missing node"):
        list(depth_first(SimpleNamespace(nodes=[node(5)])))


def bn_layer(path: str, channels: int = 4) -> BNLayer:
    zeros = np.zeros(channels, "float32")
    return BNLayer(path, path.rsplit("/", 1)[-1], "BatchNormalization", zeros, zeros + 1)


def test_matching_by_path_then_name_then_position() -> None:
    contents = CheckpointContents(
        "ckpt-1",
        (
            checkpoint_group("model/layer_with_weights-5", "moving_mean", "moving_variance"),
            checkpoint_group("block/bn", "moving_mean", "moving_variance"),
            checkpoint_group("head_bn", "moving_mean", "moving_variance"),
        ),
    )
    layers = (bn_layer("cnn/stem_bn"), bn_layer("cnn/block/bn"), bn_layer("cnn/x/head_bn"))
    matched = match_layers(contents, "model.keras", layers)
    assert [
        (m.layer, m.group.path if m.group else None, m.matched_by) for m in matched.matches
    ] == [
        ("cnn/stem_bn", "model/layer_with_weights-5", "position"),
        ("cnn/block/bn", "block/bn", "layer path"),
        ("cnn/x/head_bn", "head_bn", "layer name"),
    ]
    assert matched.model == "model.keras"
    assert matched.coverage.bn_layers == 3 and matched.coverage.with_moving_stats == 3
    [problem] = bn020.check(matched, {})
    assert problem.message.startswith("1 of the model's 3 BatchNorm layers matched")
    assert problem.details == {"pairs": {"cnn/stem_bn": "model/layer_with_weights-5"}}


def test_no_position_guess_when_counts_differ() -> None:
    contents = CheckpointContents(
        "ckpt-1", (checkpoint_group("a", "moving_mean", "moving_variance"),)
    )
    matched = match_layers(contents, "m.keras", (bn_layer("m/x_bn"), bn_layer("m/y_bn")))
    assert [m.group for m in matched.matches] == [None, None]
    assert matched.coverage.with_moving_stats == 0
    assert list(bn020.check(matched, {})) == []


def test_ambiguous_names_are_not_matched_by_name() -> None:
    groups = tuple(
        checkpoint_group(path, "moving_mean", "moving_variance") for path in ("a/bn", "b/bn", "c")
    )
    matched = match_layers(CheckpointContents("p", groups), "m", (bn_layer("m/bn"),))
    assert matched.matches[0].group is None


def test_coverage_counts_shape_mismatches_as_not_restored() -> None:
    group = checkpoint_group("bn", "gamma", "moving_mean", "moving_variance", channels=16)
    matched = match_layers(CheckpointContents("p", (group,)), "m", (bn_layer("m/bn", 24),))
    assert matched.matches[0].matched_by == "layer path"
    assert matched.coverage.with_moving_stats == 0
