"""Each model is reported in its framework's words: PyTorch files (and ONNX graphs PyTorch
exported) in running_mean, running_var, weight and bias, with momentum in PyTorch's convention;
ONNX graphs of other producers in the operator's own input names; Keras files as ever."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from bncheck.model import KERAS_WORDS, ONNX_WORDS, PYTORCH_WORDS, VOCABULARIES
from bncheck.rules import (
    bn001_untouched_moving_stats,
    bn008_momentum_never_updates,
    bn009_suspicious_momentum,
)
from tests.conftest import FIXTURES, CliResult
from tests.rules.conftest import layer, problems
from tests.torch_files import bn_arrays, state_dict, write_zip

Run = Callable[..., CliResult]
KERAS_TERMS = ("moving_mean", "moving_variance", "gamma", "beta", "model.fit")


def test_one_vocabulary_per_framework() -> None:
    assert VOCABULARIES["keras"] is VOCABULARIES["tensorflow"] is KERAS_WORDS
    names = ("moving_mean", "moving_variance", "gamma", "beta")
    assert [PYTORCH_WORDS.array(n) for n in names] == [
        "running_mean",
        "running_var",
        "weight",
        "bias",
    ]
    assert [ONNX_WORDS.array(n) for n in names] == [
        "input_mean",
        "input_var",
        "scale",
        "B",
    ]
    # PyTorch's momentum is the weight of the new batch; ONNX's keeps Keras's convention.
    assert PYTORCH_WORDS.momentum(0.9) == 1 - 0.9 and ONNX_WORDS.momentum(0.9) == 0.9
    text = "call ``model(x, training=True)``, or ``model.fit``; keep ``bn(x, training=True)``"
    assert KERAS_WORDS.translate(text) is text
    assert PYTORCH_WORDS.translate(text) == (
        "call ``model.train()``, or the training loop; keep ``bn(x, training=True)``"
    )


def test_rule_messages_speak_the_layers_words() -> None:
    untouched = {"moving_mean": [0.0] * 4, "moving_variance": [1.0] * 4}
    [keras] = problems(bn001_untouched_moving_stats, layer(**untouched))
    [torch] = problems(
        bn001_untouched_moving_stats,
        layer(**untouched, framework="pytorch", momentum=0.1, num_batches_tracked=0),
    )
    assert keras.message.startswith("moving_mean and moving_variance are still")
    assert "gamma and beta trained" in keras.message
    assert torch.message.startswith("running_mean and running_var are still")
    assert "weight and bias trained" in torch.message
    assert not any(term in torch.message for term in KERAS_TERMS)
    # The same details, keyed by bncheck's names, whatever the words.
    assert torch.details["trained"] == keras.details["trained"] == ["gamma", "beta"]


def test_momentum_is_stated_in_the_words_convention() -> None:
    # An ONNX graph keeps Keras's convention (0.01 kept is 0.99 of each new batch); exported by
    # PyTorch, it is reported in PyTorch's.
    exported = layer(framework="onnx", momentum=0.01, words="pytorch")
    [problem] = problems(bn009_suspicious_momentum, exported)
    assert problem.message.startswith("momentum=0.99 keeps only 1% of the old statistics")
    assert "in PyTorch momentum weighs the new batch" in problem.message
    [onnx] = problems(bn009_suspicious_momentum, layer(framework="onnx", momentum=0.01))
    assert onnx.message.startswith("momentum=0.01 keeps only 1%") and "in ONNX" in onnx.message
    [frozen] = problems(bn008_momentum_never_updates, layer(framework="pytorch", momentum=0.0))
    assert frozen.message.startswith(
        "momentum=0 (PyTorch: the weight of each new batch): the running statistics never change"
    )


def test_pytorch_report_table_and_findings(run_cli: Run, tmp_path: Path) -> None:
    never = {
        **bn_arrays("bn", tracked=0),
        "bn.running_mean": np.zeros(4, "f4"),
        "bn.running_var": np.ones(4, "f4"),
    }
    path = write_zip(tmp_path / "never.pt", state_dict(never))
    result = run_cli("inspect", path)
    header = next(line for line in result.out.splitlines() if line.startswith("layer "))
    assert header.split()[-4:] == ["running_mean", "running_var", "weight", "bias"]
    assert "BN001 untouched-moving-stats  bn: running_mean and running_var" in result.out
    assert not any(term in result.out for term in KERAS_TERMS)
    # JSON keys stay bncheck's stable names.
    report = run_cli("inspect", path, "--format", "json").json()["models"][0]
    assert "moving_mean" in report["layers"][0]


def test_onnx_exported_by_pytorch_speaks_pytorch(run_cli: Run) -> None:
    result = run_cli("inspect", FIXTURES / "pytorch" / "eval_trained.onnx")
    rows = result.out.splitlines()
    header = next(line for line in rows if line.startswith("layer "))
    assert header.split()[-4:] == ["running_mean", "running_var", "weight", "bias"]
    stem = next(line for line in rows if line.startswith("stem.1 "))
    assert stem.split()[3] == "0.1"  # the exporter's 0.9, in PyTorch's convention
    assert "without model.train()" in result.out
    assert not any(term in result.out for term in KERAS_TERMS)


def test_explain_in_a_frameworks_words(run_cli: Run) -> None:
    keras = run_cli("explain", "BN001")
    default = run_cli("explain", "BN001", "--framework", "keras")
    assert keras.code == default.code == 0 and keras.out == default.out
    torch = run_cli("explain", "BN001", "--framework", "pytorch")
    assert torch.code == 0
    assert all(len(line) <= 100 for line in torch.out.splitlines())
    flowing = " ".join(torch.out.split())
    assert "words: PyTorch's: running_mean, running_var, weight, bias" in torch.out
    assert "model.train() and model.eval()" in flowing
    assert "momentum is the weight of each new batch" in flowing
    assert "running_mean and running_var still equal their initializers" in flowing
    assert "retrain with model.train() (the training loop does" in flowing
    assert "gamma" not in torch.out and "moving_mean" not in torch.out
    onnx = run_cli("explain", "BN004", "--framework", "onnx")
    assert "input_var is negative" in " ".join(onnx.out.split())
    refused = run_cli("explain", "BN001", "--framework", "caffe")
    assert refused.code == 2
