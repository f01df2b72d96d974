from __future__ import annotations

from bncheck.model import CheckpointContents, LayerMatch
from bncheck.rules import bn012_checkpoint_model_mismatch as rule
from tests.rules.conftest import checkpoint_group, problems

COMPLETE = ("gamma", "beta", "moving_mean", "moving_variance")


def contents(*matches: LayerMatch) -> CheckpointContents:
    groups = tuple(m.group for m in matches if m.group is not None)
    return CheckpointContents("ckpt-1", groups, model="model.keras", matches=matches)


def test_layer_without_a_match() -> None:
    [problem] = problems(rule, contents(LayerMatch("cnn/head_bn", 16, None, None)))
    assert problem.layer == "cnn/head_bn"
    assert problem.details == {"channels": 16}
    assert "no BatchNorm variables in the checkpoint match this layer" in problem.message


def test_match_without_moving_statistics() -> None:
    group = checkpoint_group("bn1", "gamma", "beta")
    [problem] = problems(rule, contents(LayerMatch("cnn/bn1", 4, group, "layer path")))
    assert problem.details["missing"] == ["moving_mean", "moving_variance"]
    assert problem.details["matched_by"] == "layer path"
    assert "bn1 (matched by layer path) have no moving_mean or moving_variance" in problem.message


def test_match_of_another_width() -> None:
    group = checkpoint_group("block/bn", *COMPLETE, channels=16)
    [problem] = problems(rule, contents(LayerMatch("cnn/block/bn", 24, group, "position")))
    assert problem.details["channels"] == 24
    assert problem.details["shapes"] == {name: [16] for name in COMPLETE}
    assert "do not fit its 24 channels" in problem.message


def test_missing_and_mismatched_are_both_reported() -> None:
    group = checkpoint_group("bn", "gamma", "beta", "moving_mean", channels=8)
    found = problems(rule, contents(LayerMatch("m/bn", 4, group, "layer name")))
    assert [sorted(p.details) for p in found] == [
        ["group", "keys", "matched_by", "missing"],
        ["channels", "group", "keys", "matched_by", "shapes"],
    ]


def test_complete_matches_pass() -> None:
    group = checkpoint_group("bn1", *COMPLETE)
    assert problems(rule, contents(LayerMatch("cnn/bn1", 4, group, "layer path"))) == []


def test_without_a_model_there_is_nothing_to_match() -> None:
    group = checkpoint_group("bn1", "gamma")
    assert problems(rule, CheckpointContents("ckpt-1", (group,))) == []
