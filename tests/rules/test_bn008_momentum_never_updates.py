from pathlib import Path

import pytest

from bncheck.findings import Escalation
from bncheck.rules import bn001_untouched_moving_stats as bn001
from bncheck.rules import bn008_momentum_never_updates as rule
from tests.rules.conftest import layer, problems


def test_momentum_one_with_statistics_that_moved_is_information() -> None:
    """Statistics set before the momentum froze them, or re-estimated since, serve inference as
    they are: only further training is affected."""
    [problem] = problems(rule, layer(momentum=1.0))
    assert "never change" in problem.message
    assert "inference uses as they are" in problem.message
    assert problem.details == {"momentum": 1.0, "untouched": False}
    assert problem.escalation is Escalation.MITIGATED


def test_momentum_one_explains_initial_statistics_in_one_finding() -> None:
    untouched = layer(momentum=1.0, moving_mean=[0] * 4, moving_variance=[1] * 4)
    [problem] = problems(rule, untouched)
    assert "still at their initial values (0 and 1) while gamma and beta trained" in (
        problem.message
    )
    assert problem.details["untouched"] is True
    assert problem.escalation is None
    # BN001 leaves the layer to this rule: one finding per layer, not two.
    assert problems(bn001, untouched) == []


def test_momentum_one_on_a_fresh_layer_is_an_error() -> None:
    """Nothing trained yet and nothing can move the statistics later: not the mitigated case."""
    fresh = layer(
        momentum=1.0, moving_mean=[0] * 4, moving_variance=[1] * 4, gamma=[1] * 4, beta=[0] * 4
    )
    [problem] = problems(rule, fresh)
    assert "training will not move them" in problem.message
    assert problem.details["untouched"] is True
    assert problem.escalation is None


def test_momentum_above_one_diverges() -> None:
    [problem] = problems(rule, layer(momentum=1.5))
    assert "diverge" in problem.message


def test_usual_momentum_and_unknown_pass() -> None:
    assert problems(rule, layer(momentum=0.999)) == []
    assert problems(rule, layer(momentum=None)) == []


def test_pytorch_momentum_zero_never_updates() -> None:
    [problem] = problems(rule, layer(momentum=0.0, framework="pytorch"))
    assert "momentum=0 (PyTorch: the weight of each new batch)" in problem.message
    assert "never change" in problem.message
    assert problems(rule, layer(momentum=1.0, framework="pytorch")) == []
    assert problems(rule, layer(momentum=0.1, framework="pytorch")) == []


def test_an_onnx_momentum_of_one_says_nothing_about_training() -> None:
    """PyTorch's exporter writes 1 - momentum: 1.0 for momentum=None, the cumulative average,
    under which the statistics do change. The graph cannot tell, so nothing is claimed; initial
    statistics that never moved are still BN001's."""
    assert problems(rule, layer(momentum=1.0, framework="onnx")) == []
    assert len(problems(rule, layer(momentum=1.5, framework="onnx"))) == 1
    untouched = layer(momentum=1.0, framework="onnx", moving_mean=[0] * 4, moving_variance=[1] * 4)
    assert problems(rule, untouched) == []
    [finding] = problems(bn001, untouched)
    assert finding.layer == "model/bn"


def test_a_pytorch_export_with_cumulative_momentum_gets_no_bn008(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("torch")
    from bncheck.readers import read_model
    from tests import torch_nets

    data = torch_nets.digits()
    net = torch_nets.train(torch_nets.Net(momentum=None), data, lambda n: n.train(), epochs=1)
    model = read_model(str(torch_nets.export_onnx(net, tmp_path / "cumulative.onnx")))
    assert [bn.momentum for bn in model.layers] == [1.0, 1.0]  # what the exporter wrote
    for bn in model.layers:
        assert problems(rule, bn) == [] and problems(bn001, bn) == []
