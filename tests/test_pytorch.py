"""PyTorch files are read without PyTorch: state dicts, checkpoints, pickled models, TorchScript
and the legacy format, with PyTorch's conventions, and the arrays PyTorch itself would load."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, CliResult
from tests.torch_files import Name, Tensor, bn_arrays, dumps, state_dict, write_legacy, write_zip

Run = Callable[..., CliResult]
PYTORCH = FIXTURES / "pytorch"
STATE_DICTS = ["healthy.pt", "healthy_legacy.pt", "eval_trained.pt", "nan_variance.pt"]


def arrays_of(path: Path) -> dict[str, dict[str, np.ndarray]]:
    return {layer.path: layer.arrays() for layer in read_model(str(path)).layers}


@pytest.mark.parametrize("fixture", [*STATE_DICTS, "frozen.pt", "healthy_checkpoint.pth"])
def test_arrays_are_bit_identical_to_torch_load(fixture: str) -> None:
    torch = pytest.importorskip("torch", reason="the cross-check needs the torch extra")
    # Our own checkpoint holds a Namespace and a NumPy scalar, which weights_only refuses.
    loaded = torch.load(PYTORCH / fixture, weights_only=fixture.endswith(".pt"))
    if "state_dict" in loaded:
        loaded = loaded["state_dict"]
    for path, arrays in arrays_of(PYTORCH / fixture).items():
        for ours, theirs in zip(
            ("gamma", "beta", "moving_mean", "moving_variance"),
            ("weight", "bias", "running_mean", "running_var"),
            strict=True,
        ):
            expected = loaded[f"{path}.{theirs}"].numpy()
            np.testing.assert_array_equal(arrays[ours], expected)
            assert arrays[ours].dtype == expected.dtype


@pytest.mark.parametrize(
    "fixture", ["healthy_model.pt", "healthy_torchscript.pt", "malicious.pt", "healthy.safetensors"]
)
def test_every_form_of_the_same_model_gives_the_same_arrays(fixture: str) -> None:
    # torch.load would need the model's classes, or run the malicious pickle's command.
    expected = arrays_of(PYTORCH / "healthy.pt")
    found = arrays_of(PYTORCH / fixture)
    assert set(found) == set(expected)  # safetensors keeps no module order
    for path, arrays in found.items():
        for name, values in arrays.items():
            np.testing.assert_array_equal(values, expected[path][name])


def test_torchscript_arrays_match_the_loaded_module() -> None:
    torch = pytest.importorskip("torch", reason="the cross-check needs the torch extra")
    state = torch.jit.load(str(PYTORCH / "healthy_torchscript.pt")).state_dict()
    for layer in read_model(str(PYTORCH / "healthy_torchscript.pt")).layers:
        np.testing.assert_array_equal(layer.moving_variance, state[f"{layer.path}.running_var"])
        assert layer.num_batches_tracked == int(state[f"{layer.path}.num_batches_tracked"])


def test_state_dict_layers_follow_pytorch_conventions() -> None:
    description = read_model(str(PYTORCH / "healthy.pt"))
    assert description.format == "pytorch"
    assert [layer.path for layer in description.layers] == ["stem.1", "layer1.bn1"]
    layer = description.layers[1]
    assert layer.name == "bn1" and layer.channels == 16
    assert layer.framework == "pytorch" and layer.variance_estimator == "unbiased"
    assert layer.num_batches_tracked == 540  # 12 epochs of 45 batches
    assert layer.momentum is None and layer.epsilon is None  # a state dict records neither
    assert layer.initial.assumed
    assert any("state dict records no architecture" in note for note in description.notes)


def test_pickled_model_gives_class_momentum_and_eps_without_running_it() -> None:
    description = read_model(str(PYTORCH / "healthy_model.pt"))
    layer = description.layers[0]
    assert (layer.class_name, layer.momentum, layer.epsilon) == ("BatchNorm2d", 0.1, 1e-5)
    assert layer.keras_momentum == pytest.approx(0.9)
    [note] = [note for note in description.notes if "read as inert data" in note]
    assert "__main__.DigitNet" in note and "torch.nn.modules.batchnorm.BatchNorm2d" in note


def test_checkpoint_says_which_entry_holds_the_state_dict() -> None:
    description = read_model(str(PYTORCH / "healthy_checkpoint.pth"))
    assert [layer.path for layer in description.layers] == ["stem.1", "layer1.bn1"]
    assert "BatchNorm tensors read from the entry 'state_dict'" in description.notes
    assert any("argparse.Namespace" in note for note in description.notes)
    assert description.pickled_calls == ()  # numpy scalars and a Namespace are data


def test_torchscript_archive_is_read_statically() -> None:
    description = read_model(str(PYTORCH / "healthy_torchscript.pt"))
    assert description.format == "torchscript"
    assert [layer.class_name for layer in description.layers] == ["BatchNorm2d"] * 2
    assert any("TorchScript archive" in note for note in description.notes)


def test_several_state_dicts_keep_their_entry_in_the_path(tmp_path: Path) -> None:
    model = state_dict(bn_arrays("bn1"))
    ema = state_dict({k: v + 1 for k, v in bn_arrays("bn1").items()})
    for index, tensor in enumerate(ema.values()):
        ema[list(ema)[index]] = Tensor(f"e{index}", tensor.values)
    path = write_zip(tmp_path / "ckpt.pt", {"model": model, "ema": ema, "epoch": 3})
    assert [layer.path for layer in read_model(str(path)).layers] == ["model/bn1", "ema/bn1"]


def test_legacy_format_with_a_view_of_a_shared_storage(tmp_path: Path) -> None:
    path = write_legacy(tmp_path / "old.pt", state_dict(bn_arrays("features.3")))
    description = read_model(str(path))
    assert description.notes[0].startswith("PyTorch legacy format")
    np.testing.assert_array_equal(
        description.layers[0].moving_variance, bn_arrays("features.3")["features.3.running_var"]
    )


def test_half_precision_views_of_one_shared_storage(tmp_path: Path) -> None:
    storage = np.arange(12, dtype="float16")
    mean = Tensor("0", storage, offset=4, size=(4,), stride=(1,))
    var = Tensor("0", storage, offset=8, size=(4,), stride=(1,))
    path = write_zip(tmp_path / "half.pt", {"bn.running_mean": mean, "bn.running_var": var})
    [layer] = read_model(str(path)).layers
    np.testing.assert_array_equal(layer.moving_mean, [4, 5, 6, 7])
    np.testing.assert_array_equal(layer.moving_variance, [8, 9, 10, 11])


def test_big_endian_archives(tmp_path: Path) -> None:
    arrays = bn_arrays("bn", tracked=None)
    swapped = {name: values.astype(">f4") for name, values in arrays.items()}
    path = tmp_path / "big.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", dumps(state_dict(arrays)))
        archive.writestr("m/byteorder", "big")
        for index, values in enumerate(swapped.values()):
            archive.writestr(f"m/data/{index}", values.tobytes())
    [layer] = read_model(str(path)).layers
    np.testing.assert_array_equal(layer.moving_mean, arrays["bn.running_mean"])


def test_a_file_without_batchnorm_has_no_layers(tmp_path: Path) -> None:
    path = write_zip(tmp_path / "linear.pt", state_dict({"fc.weight": np.ones(3, "float32")}))
    assert read_model(str(path)).layers == ()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ({"bn.running_mean": Tensor("0", np.zeros(4, "f4"), offset=2)}, "runs past its storage"),
        ({"bn.running_mean": Tensor("0", np.zeros(4, "f4"), numel=99)}, "the pickle says 396"),
        ({"bn.running_mean": Tensor("0", np.zeros(4, "f4"), size=(2**63,))}, "not a valid size"),
        ({"bn.running_mean": Tensor("../data", np.zeros(4, "f4"))}, "invalid storage key"),
        ({"bn.running_mean": Tensor("0", np.zeros(4, "f4"), stride=(2,))}, "not a contiguous"),
    ],
)
def test_tensor_metadata_is_checked_against_the_storage(
    tmp_path: Path, case: dict[str, Tensor], reason: str
) -> None:
    arrays = {"bn.running_var": Tensor("9", np.ones(4, "f4")), **case}
    path = write_zip(tmp_path / "bad.pt", arrays)
    result = subprocess.run(
        [sys.executable, "-m", "bncheck", "inspect", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert reason in result.stderr and "Traceback" not in result.stderr


def test_mismatched_channel_counts_are_an_error(run_cli: Run, tmp_path: Path) -> None:
    arrays = bn_arrays("bn")
    arrays["bn.running_var"] = np.ones(5, "float32")
    result = run_cli("inspect", write_zip(tmp_path / "odd.pt", state_dict(arrays)))
    assert result.code == 3
    assert "bn: running_var holds 5 values, running_mean 4" in result.err


def test_findings_on_synthetic_state_dicts(run_cli: Run, tmp_path: Path) -> None:
    never = {
        **bn_arrays("a", tracked=0),
        "a.running_mean": np.zeros(4, "f4"),
        "a.running_var": np.ones(4, "f4"),
    }
    path = write_zip(tmp_path / "never.pt", state_dict(never))
    report = run_cli("inspect", path, "--format", "json").json()["models"][0]
    [finding] = report["findings"]
    assert finding["rule"] == "BN001" and finding["severity"] == "error"
    assert finding["details"]["num_batches_tracked"] == 0
    assert report["layers"][0]["framework"] == "pytorch"
    assert report["layers"][0]["variance_estimator"] == "unbiased"
    assert report["layers"][0]["num_batches_tracked"] == 0


def test_pickled_functions_are_listed_never_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where the call would touch its canary
    payload = _Call(Name("posix", "system"), ("touch canary",))
    path = write_zip(tmp_path / "evil.pt", state_dict(bn_arrays("bn"), payload=payload))
    description = read_model(str(path))
    assert not (tmp_path / "canary").exists()
    [pickled] = description.pickled_calls
    assert pickled.target == "posix.system"
    assert pickled.arguments == repr("touch canary")
    assert pickled.where.startswith("archive/data.pkl, byte ")


class _Call:
    """Pickles as a call of ``target(*arguments)``."""

    def __init__(self, target: Name, arguments: tuple[object, ...]) -> None:
        self.target, self.arguments = target, arguments

    def __reduce__(self) -> tuple[object, ...]:
        return self.target, self.arguments


STATIC = """
import sys
from bncheck.cli import main
try:
    main(["inspect", *sys.argv[1:], "--format", "json"])
except SystemExit as done:
    print("EXIT", done.code, file=sys.stderr)
frameworks = ("tensorflow", "keras", "torch", "onnx", "onnxruntime", "safetensors", "matplotlib")
print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in frameworks), file=sys.stderr)
"""


def test_static_inspection_imports_no_framework() -> None:
    files = ["healthy.pt", "healthy_legacy.pt", "healthy_torchscript.pt", "healthy.safetensors"]
    done = subprocess.run(
        [sys.executable, "-c", STATIC, *(str(PYTORCH / f) for f in [*files, "healthy.onnx"])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "EXIT 0" in done.stderr and "HEAVY []" in done.stderr, done.stderr
