from __future__ import annotations

from bncheck.model import CheckpointContents, CheckpointGroup, LayerMatch
from bncheck.rules import bn011_checkpoint_missing_moving_stats as rule
from tests.rules.conftest import checkpoint_group, problems


def contents(*groups: CheckpointGroup, matches: tuple[LayerMatch, ...] = ()) -> CheckpointContents:
    model = "model.keras" if matches else None
    return CheckpointContents("ckpt/model.ckpt", groups, model=model, matches=matches)


def test_trainable_only_saver_loses_both_statistics() -> None:
    [problem] = problems(rule, contents(checkpoint_group("conv1/BatchNorm", "beta")))
    assert problem.layer == "conv1/BatchNorm"
    assert problem.details["present"] == ["beta"]
    assert problem.details["missing"] == ["moving_mean", "moving_variance"]
    assert problem.details["keys"] == {"beta": "conv1/BatchNorm/beta"}
    assert "no moving_mean or moving_variance" in problem.message


def test_one_missing_statistic_is_enough() -> None:
    group = checkpoint_group("bn", "gamma", "beta", "moving_mean")
    [problem] = problems(rule, contents(group))
    assert problem.details["missing"] == ["moving_variance"]


def test_complete_groups_pass() -> None:
    complete = checkpoint_group("bn", "gamma", "beta", "moving_mean", "moving_variance")
    no_scale = checkpoint_group("BatchNorm", "beta", "moving_mean", "moving_variance")
    assert problems(rule, contents(complete, no_scale)) == []


def test_every_incomplete_group_is_reported_in_order() -> None:
    found = problems(
        rule,
        contents(
            checkpoint_group("a/bn", "gamma", "beta"),
            checkpoint_group("b/bn", "gamma", "beta", "moving_mean", "moving_variance"),
            checkpoint_group("c/bn", "beta"),
        ),
    )
    assert [p.layer for p in found] == ["a/bn", "c/bn"]


def test_groups_matched_to_a_model_layer_are_left_to_bn012() -> None:
    matched = checkpoint_group("bn1", "gamma", "beta")
    spare = checkpoint_group("old/bn", "gamma", "beta")
    match = LayerMatch("cnn/bn1", 4, matched, "layer path")
    assert [p.layer for p in problems(rule, contents(matched, spare, matches=(match,)))] == [
        "old/bn"
    ]
