from bncheck import verdict
from bncheck.findings import Escalation
from bncheck.model import InitialValues
from bncheck.rules import bn001_untouched_moving_stats as rule
from tests.rules.conftest import layer, problems

UNTOUCHED = {"moving_mean": [0, 0, 0, 0], "moving_variance": [1, 1, 1, 1]}


def test_trained_weights_with_initial_statistics_are_flagged() -> None:
    [problem] = problems(rule, layer(**UNTOUCHED))
    assert problem.layer == "model/bn"
    assert problem.details["trained"] == ["gamma", "beta"]
    assert problem.details["channels"] == 4
    assert "never updated" in problem.message


def test_layers_found_by_tf1_variable_names_name_the_update_ops_cause() -> None:
    from bncheck.model import INFERRED_BY_NAMES

    [problem] = problems(rule, layer(class_name=INFERRED_BY_NAMES, **UNTOUCHED))
    assert "a train_op without a dependency on tf.GraphKeys.UPDATE_OPS" in problem.message
    [keras] = problems(rule, layer(**UNTOUCHED))
    assert "UPDATE_OPS" not in keras.message


def test_an_unrecorded_momentum_is_named_among_the_causes() -> None:
    """A BatchNorm a custom layer creates has no configuration: momentum 1.0 is as likely a
    cause as a loop without training=True, and the loaded model can tell."""
    [unknown] = problems(rule, layer(momentum=None, **UNTOUCHED))
    assert "or momentum 1.0? A custom layer's configuration keeps the momentum" in unknown.message
    assert "--custom-objects" in unknown.message
    [known] = problems(rule, layer(momentum=0.99, **UNTOUCHED))
    assert "momentum 1.0" not in known.message


def test_only_beta_trained_is_enough() -> None:
    [problem] = problems(rule, layer(gamma=[1, 1, 1, 1], **UNTOUCHED))
    assert problem.details["trained"] == ["beta"]


def test_updated_statistics_pass() -> None:
    assert problems(rule, layer()) == []


def test_one_channel_moved_passes() -> None:
    assert problems(rule, layer(moving_mean=[0, 0, 0.2, 0], moving_variance=[1, 1, 1, 1])) == []


def test_untrained_layer_is_left_to_bn002() -> None:
    assert problems(rule, layer(gamma=[1, 1, 1, 1], beta=[0, 0, 0, 0], **UNTOUCHED)) == []


def test_configured_initializers_are_respected() -> None:
    custom = InitialValues(moving_mean=0.5, moving_variance=2.0)
    stats = {"moving_mean": [0.5] * 4, "moving_variance": [2.0] * 4}
    assert len(problems(rule, layer(initial=custom, **stats))) == 1
    # The same values with default initializers did move away from 0 and 1.
    assert problems(rule, layer(**stats)) == []


def test_non_constant_initializer_cannot_be_judged() -> None:
    assert problems(rule, layer(initial=InitialValues(moving_mean=None), **UNTOUCHED)) == []


def test_tolerance_option() -> None:
    nearly = {"moving_mean": [1e-4, 0, 0, 0], "moving_variance": [1, 1, 1, 1]}
    assert problems(rule, layer(**nearly)) == []
    assert len(problems(rule, layer(**nearly), tolerance=1e-3)) == 1


def test_layer_without_gamma_and_beta_cannot_show_training() -> None:
    bare = layer(gamma=None, beta=None, center=False, scale=False, **UNTOUCHED)
    assert problems(rule, bare) == []


def test_pytorch_counter_of_zero_is_named_as_the_evidence() -> None:
    [problem] = problems(rule, layer(framework="pytorch", num_batches_tracked=0, **UNTOUCHED))
    assert "num_batches_tracked is 0: the layer never ran in training mode" in problem.message
    assert problem.details["num_batches_tracked"] == 0
    assert problem.escalation is None


def test_pytorch_layer_without_counter_is_a_frozen_batchnorm_look_alike() -> None:
    # FrozenBatchNorm (detectron2, timm) has no num_batches_tracked, and converted backbones keep
    # mean 0 and variance 1 on purpose: information, not an error.
    [problem] = problems(rule, layer(framework="pytorch", num_batches_tracked=None, **UNTOUCHED))
    assert problem.escalation is Escalation.MITIGATED
    assert "FrozenBatchNorm" in problem.message


def test_pytorch_counter_of_zero_with_moved_statistics_passes() -> None:
    # PyTorch sets num_batches_tracked to 0 when loading a checkpoint from before version 0.4.1.
    assert problems(rule, layer(framework="pytorch", num_batches_tracked=0)) == []


def test_pytorch_counter_above_zero_points_at_momentum_and_the_repair() -> None:
    """The layer normalised 300 training batches with their statistics: the network learned
    with batch statistics, and re-estimating their averages repairs it (recalibrate takes the
    layer by default). A counter of 0 says nothing of the kind: measure first."""
    counted = layer(framework="pytorch", num_batches_tracked=300, **UNTOUCHED)
    [problem] = problems(rule, counted)
    assert "num_batches_tracked is 300: the layer ran in training mode" in problem.message
    assert "momentum must have been 0" in problem.message
    assert "re-estimating them from data repairs it" in problem.message
    assert "can make such a model worse" not in problem.message
    assert not verdict.learned_without_batch_statistics(counted)
    never = layer(framework="pytorch", num_batches_tracked=0, **UNTOUCHED)
    [problem] = problems(rule, never)
    assert "never ran in training mode" in problem.message
    assert "can make such a model worse" in problem.message
    assert verdict.learned_without_batch_statistics(never)
