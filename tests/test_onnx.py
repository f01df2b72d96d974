"""ONNX models are read with bncheck's own message definitions: BatchNormalization initializers
wherever the graph keeps them, external data only from inside the model's folder, and the
arrays the onnx package itself reads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
PYTORCH = FIXTURES / "pytorch"
EXPORTS = ["healthy.onnx", "eval_trained.onnx", "nan_variance.onnx", "training_mode.onnx"]


def bn_model(
    values: dict[str, np.ndarray] | None = None,
    attributes: dict[str, Any] | None = None,
    through_identity: bool = False,
) -> onnx.ModelProto:
    """Conv -> BatchNormalization over 4 channels, parameters as initializers."""
    rng = np.random.default_rng(0)
    values = values or {
        "bn.weight": rng.uniform(0.5, 1.5, 4).astype("float32"),
        "bn.bias": rng.normal(0, 1, 4).astype("float32"),
        "bn.running_mean": rng.normal(0, 1, 4).astype("float32"),
        "bn.running_var": rng.uniform(0.5, 2, 4).astype("float32"),
    }
    names = list(values)
    initializers = [numpy_helper.from_array(v, name) for name, v in values.items()]
    initializers.append(numpy_helper.from_array(np.ones((4, 1, 1, 1), "float32"), "w"))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"])]
    if through_identity:
        nodes.append(helper.make_node("Identity", [names[3]], ["shared_var"]))
        names[3] = "shared_var"
    nodes.append(
        helper.make_node(
            "BatchNormalization", ["c", *names], ["y"], name="bn_node", **(attributes or {})
        )
    )
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 4, 4])],
        initializers,
    )
    return helper.make_model(
        graph, producer_name="tests", opset_imports=[helper.make_opsetid("", 17)]
    )


@pytest.mark.parametrize("fixture", EXPORTS)
def test_arrays_match_the_onnx_package(fixture: str) -> None:
    model = onnx.load(str(PYTORCH / fixture))
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}
    description = read_model(str(PYTORCH / fixture))
    assert description.format == "onnx" and [layer.path for layer in description.layers] == [
        "stem.1",
        "layer1.bn1",
    ]
    for layer in description.layers:
        np.testing.assert_array_equal(layer.moving_variance, stored[f"{layer.path}.running_var"])
        np.testing.assert_array_equal(layer.beta, stored[f"{layer.path}.bias"])
        assert layer.framework == "onnx" and layer.variance_estimator == "unbiased"
        assert layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-5)


def test_the_same_statistics_as_the_pytorch_file() -> None:
    ours = {layer.path: layer for layer in read_model(str(PYTORCH / "healthy.onnx")).layers}
    theirs = read_model(str(PYTORCH / "healthy.pt")).layers
    assert theirs and sorted(ours) == sorted(layer.path for layer in theirs)
    for layer in theirs:
        np.testing.assert_array_equal(ours[layer.path].moving_mean, layer.moving_mean)


def test_folded_exports_say_there_is_nothing_to_check(run_cli: Run) -> None:
    result = run_cli("inspect", PYTORCH / "healthy_folded.onnx", "--format", "json")
    model = result.json()["models"][0]
    assert result.code == 0 and model["layers"] == [] and model["findings"] == []
    assert any(note.startswith("BN folded: nothing to check") for note in model["notes"])


def test_training_mode_nodes_are_the_onnx_form_of_bn010(run_cli: Run) -> None:
    result = run_cli("inspect", PYTORCH / "training_mode.onnx", "--format", "json")
    findings = result.json()["models"][0]["findings"]
    assert {f["rule"] for f in findings} == {"BN010"} and result.code == 1


def test_parameters_through_identity_and_constant_nodes(tmp_path: Path) -> None:
    model = bn_model(through_identity=True)
    # Move the mean into a Constant node, as some exporters do.
    mean = next(t for t in model.graph.initializer if t.name == "bn.running_mean")
    model.graph.node.insert(0, helper.make_node("Constant", [], ["bn.running_mean"], value=mean))
    model.graph.initializer.remove(mean)
    onnx.save(model, tmp_path / "aliased.onnx")
    [layer] = read_model(str(tmp_path / "aliased.onnx")).layers
    assert layer.path == "bn"
    np.testing.assert_array_equal(layer.moving_mean, numpy_helper.to_array(mean))


@pytest.mark.parametrize("dtype", ["float16", "float64"])
def test_typed_fields_and_other_float_widths(tmp_path: Path, dtype: str) -> None:
    values = {
        name: np.array([0.5, 1.0, 2.0, 4.0], dtype=dtype)
        for name in ("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var")
    }
    model = bn_model(values)
    for tensor in model.graph.initializer:
        if tensor.name.startswith("bn."):  # the typed fields instead of raw_data
            typed = helper.make_tensor(
                tensor.name, tensor.data_type, tensor.dims, values[tensor.name]
            )
            tensor.CopyFrom(typed)
    onnx.save(model, tmp_path / "typed.onnx")
    [layer] = read_model(str(tmp_path / "typed.onnx")).layers
    np.testing.assert_array_equal(layer.moving_variance, [0.5, 1.0, 2.0, 4.0])


def test_attributes_override_the_defaults(tmp_path: Path) -> None:
    onnx.save(bn_model(attributes={"epsilon": 1e-3, "momentum": 0.99}), tmp_path / "m.onnx")
    [layer] = read_model(str(tmp_path / "m.onnx")).layers
    # Exactly the numbers written, not their float32 approximations.
    assert (layer.epsilon, layer.momentum) == (1e-3, 0.99)
    assert layer.variance_estimator is None  # not written by PyTorch


def external_model(directory: Path) -> Path:
    model = bn_model()
    path = directory / "model.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path


def test_external_data_inside_the_folder_is_read(tmp_path: Path) -> None:
    path = external_model(tmp_path)
    [layer] = read_model(str(path)).layers
    expected = numpy_helper.to_array(bn_model().graph.initializer[3])
    np.testing.assert_array_equal(layer.moving_variance, expected)


def relocate(path: Path, location: str) -> None:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, path)


@pytest.mark.parametrize(
    "location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin", "", "link.bin"]
)
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path = external_model(folder)
    (tmp_path / "outside.bin").write_bytes((folder / "weights.bin").read_bytes())
    os.symlink(tmp_path / "outside.bin", folder / "link.bin")
    relocate(path, location)
    result = subprocess.run(
        [sys.executable, "-m", "bncheck", "inspect", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3
    assert "inside the model's folder" in result.stderr and len(result.stderr.splitlines()) == 1


def test_external_ranges_are_checked(run_cli: Run, tmp_path: Path) -> None:
    path = external_model(tmp_path)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:20])
    result = run_cli("inspect", path)
    assert result.code == 3 and "external range runs past 'weights.bin'" in result.err


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "the file is empty"),
        (b"\x08\x07", "no graph"),
        (b"\xff" * 64, "not a valid ONNX model"),
        (b"\x3a\x05\x0a\x03\x0a\x01", "not a valid ONNX model"),
    ],
)
def test_broken_models_are_one_line(run_cli: Run, tmp_path: Path, data: bytes, reason: str) -> None:
    (tmp_path / "broken.onnx").write_bytes(data)
    result = run_cli("inspect", tmp_path / "broken.onnx")
    assert result.code == 3 and reason in result.err, result.err


@pytest.mark.parametrize("fixture", ["healthy.onnx", "training_mode.onnx", "healthy_folded.onnx"])
def test_bncheck_messages_keep_every_field_they_do_not_name(fixture: str) -> None:
    from bncheck.readers.onnx import onnx_proto

    data = (PYTORCH / fixture).read_bytes()
    model = onnx_proto.model_class()()
    model.ParseFromString(data)
    assert model.SerializeToString() == data
