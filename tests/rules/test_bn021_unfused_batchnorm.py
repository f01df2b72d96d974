from __future__ import annotations

from bncheck.model import BatchMoments, ModelDescription
from bncheck.rules import bn021_unfused_batchnorm as rule
from tests.rules.conftest import layer, problems


def description(*moments: BatchMoments) -> ModelDescription:
    return ModelDescription("ckpt", "checkpoint", layers=(layer(),), batch_moments=moments)


def test_each_batch_moments_computation_is_one_finding_where_the_graph_has_it() -> None:
    by_hand = BatchMoments(function="", scope="bn1", axes=(0, 1, 2))
    traced = BatchMoments(function="the call of layer norm", scope="", axes=(0, 2, 3, 4))
    first, second = problems(rule, description(by_hand, traced))
    assert first.layer == "bn1"
    assert first.message.startswith(
        "the graph normalises a 4-D input op by op: tf.nn.moments over axes [0, 1, 2]"
    )
    assert first.details == {"function": "", "scope": "bn1", "axes": [0, 1, 2]}
    assert second.layer == "the call of layer norm"
    assert "a 5-D input" in second.message


def test_a_scope_inside_a_function_names_both() -> None:
    inner = BatchMoments(function="function train_step", scope="block/bn", axes=(0, 1, 2))
    [problem] = problems(rule, description(inner))
    assert problem.layer == "block/bn in function train_step"


def test_graphs_without_batch_moments_pass() -> None:
    assert problems(rule, description()) == []
