from bncheck.model import BatchStatisticsLayer, ModelDescription
from bncheck.rules import bn022_batch_statistics_at_inference as rule
from tests.rules.conftest import problems


def description(*layers: BatchStatisticsLayer) -> ModelDescription:
    return ModelDescription(path="m.pt", format="pytorch", layers=(), batch_statistics=layers)


def test_a_layer_without_running_statistics_is_reported_in_its_words() -> None:
    torch_layer = BatchStatisticsLayer(
        "features.1", "BatchNorm2d", "pytorch", "track_running_stats=False", channels=16
    )
    [problem] = problems(rule, description(torch_layer))
    assert problem.layer == "features.1"
    assert problem.message.startswith(
        "the layer keeps no running_mean and running_var (track_running_stats=False): in eval "
        "mode it normalises each batch with that batch's own mean and variance"
    )
    assert problem.details == {
        "class": "BatchNorm2d",
        "channels": 16,
        "evidence": "track_running_stats=False",
    }


def test_onnx_words_unless_pytorch_exported_it() -> None:
    node = BatchStatisticsLayer("bn", "BatchNormalization", "onnx", "computed")
    [own] = problems(rule, description(node))
    assert "keeps no input_mean and input_var" in own.message
    exported = BatchStatisticsLayer("bn", "BatchNormalization", "onnx", "computed", words="pytorch")
    [problem] = problems(rule, description(exported))
    assert "keeps no running_mean and running_var" in problem.message


def test_layers_with_statistics_pass() -> None:
    assert problems(rule, description()) == []
