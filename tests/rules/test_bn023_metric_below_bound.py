from __future__ import annotations

from pathlib import Path

import pytest

from bncheck.cli import main
from bncheck.probe.results import Metric
from bncheck.rules import bn023_metric_below_bound as rule
from tests.rules.conftest import measured_output, probe_result, problems


def probed(metric: Metric | None):  # type: ignore[no-untyped-def]
    return probe_result(outputs=(measured_output(metric=metric),))


def test_no_bound_never_fails() -> None:
    assert problems(rule, probed(Metric("accuracy", 0.05, None, None))) == []


def test_accuracy_below_the_bound_fails_and_above_passes() -> None:
    [problem] = problems(rule, probed(Metric("accuracy", 0.716, 0.99, None)), min_accuracy=0.9)
    assert problem.message == (
        "accuracy 71.6% with the stored statistics on 2048 labelled samples misses the bound: "
        "accuracy >= 90.0%"
    )
    assert problems(rule, probed(Metric("accuracy", 0.95, 0.6, None)), min_accuracy=0.9) == []


def test_mean_squared_error_is_an_upper_bound() -> None:
    metric = Metric("mean squared error", 0.7, None, None)
    [problem] = problems(rule, probed(metric), max_mean_squared_error=0.5)
    assert "misses the bound: mean squared error <= 0.5" in problem.message
    assert problems(rule, probed(metric), max_mean_squared_error=0.8) == []


def test_nothing_measured_or_another_metric_fails_the_gate() -> None:
    [unmeasured] = problems(rule, probed(None), min_accuracy=0.9)
    assert "give labelled --data" in unmeasured.message
    [other] = problems(
        rule, probed(Metric("mean squared error", 0.1, None, None)), min_accuracy=0.9
    )
    assert "is mean squared error (0.1), not what the bound names" in other.message


@pytest.mark.parametrize(
    ("flag", "said"),
    [
        ("accuracy=x", "give METRIC=VALUE"),
        ("loss=0.5", "give METRIC=VALUE"),
        ("accuracy=1.5", "accuracy is a fraction from 0 to 1"),
        ("mse=-1", "give METRIC=VALUE"),
    ],
)
def test_a_bad_bound_is_a_one_line_usage_error(
    flag: str, said: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = Path(__file__).parents[2] / "fixtures/probe/stale_stats.keras"
    data = Path(__file__).parents[2] / "fixtures/data/digits_0_1.npy"
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(model), "--data", str(data), "--fail-under", flag])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and said in err


def test_a_bound_without_data_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    model = Path(__file__).parents[2] / "fixtures/probe/stale_stats.keras"
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(model), "--fail-under", "accuracy=0.9"])
    assert exit_.value.code == 2
    assert "--fail-under needs labelled --data" in capsys.readouterr().err


def _onnx_model(folder: Path) -> Path:
    """A BatchNormalization over (N, 4) inputs: enough for the probe to open data for."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    stats = [numpy_helper.from_array(np.ones(4, np.float32), name) for name in ("g", "b", "v")]
    stats.append(numpy_helper.from_array(np.zeros(4, np.float32), "m"))
    graph = helper.make_graph(
        [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], name="bn")],
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        stats,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    np.save(folder / "x.npy", np.random.default_rng(0).normal(size=(64, 4)).astype("float32"))
    return folder / "model.onnx"


@pytest.mark.parametrize("source", ["unlabelled", "synthetic"])
def test_a_bound_that_cannot_be_measured_is_a_usage_error(
    source: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Unlabelled data measures no metric, as no data does: both are a mistake in the command
    (exit 2, one line), never a failing model (exit 1)."""
    model = _onnx_model(tmp_path)
    data = ["--data", str(tmp_path / "x.npy")] if source == "unlabelled" else ["--probe"]
    with pytest.raises(SystemExit) as exit_:
        main(["inspect", str(model), *data, "--fail-under", "accuracy=0.9"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("bncheck: error: --fail-under needs lab")
    if source == "unlabelled":
        assert f"{tmp_path / 'x.npy'} has none: give --labels FILE.npy" in err
