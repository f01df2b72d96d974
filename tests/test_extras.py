"""A command that needs an extra that is not installed: exit 2, one line naming the install."""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from typing import Any

import pytest

from bncheck import extras
from tests.conftest import FIXTURES, CliResult

MODEL = FIXTURES / "keras3/nested.keras"
PYTORCH = FIXTURES / "pytorch"
TENSORFLOW = 'needs TensorFlow: pip install "bncheck[tensorflow]"'
MATPLOTLIB = 'bncheck plot needs matplotlib: pip install "bncheck[plot]"'


def without(*missing: str) -> Callable[[str], Any]:
    return lambda name: None if name in missing else find_spec(name)


@pytest.mark.parametrize(
    ("missing", "args", "message"),
    [
        (("tensorflow",), ["inspect", MODEL, "--probe"], f"--probe {TENSORFLOW}"),
        (("keras",), ["inspect", MODEL, "--probe"], f"--probe {TENSORFLOW}"),
        (("tensorflow",), ["inspect", MODEL, "--data", "x.npy"], f"--data {TENSORFLOW}"),
        (
            ("tensorflow",),
            ["recalibrate", MODEL, "--data", "x.npy", "-o", "out.keras"],
            f"bncheck recalibrate {TENSORFLOW}",
        ),
        (("matplotlib",), ["plot", MODEL, "-o", "x.png"], MATPLOTLIB),
        (("tensorflow",), ["plot", MODEL, "-o", "x.png", "--probe"], f"--probe {TENSORFLOW}"),
        (
            ("tensorflow",),
            ["inspect", FIXTURES / "probe/tf_keras_savedmodel", "--probe"],
            f"--probe {TENSORFLOW}",
        ),
        (
            ("onnxruntime",),
            ["inspect", PYTORCH / "healthy.onnx", "--data", "x.npy"],
            '--data needs onnxruntime: pip install "bncheck[onnx]"',
        ),
        (
            ("torch",),
            ["inspect", PYTORCH / "healthy_torchscript.pt", "--probe", "--unsafe"],
            '--probe needs PyTorch: pip install "bncheck[torch]"',
        ),
    ],
)
def test_missing_extra_is_a_usage_error_naming_the_install(
    missing: tuple[str, ...],
    args: list[Any],
    message: str,
    run_cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(extras, "find_spec", without(*missing))
    result = run_cli(*args)
    assert result.code == 2
    assert result.err == f"bncheck: error: {message}\n"
    assert result.out == ""


def test_static_inspect_needs_no_extra(
    run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(extras, "find_spec", without("tensorflow", "keras", "matplotlib"))
    assert run_cli("inspect", MODEL).code == 0
    assert run_cli("checkpoint", FIXTURES / "checkpoints/tf1_saver_all").code == 0


@pytest.mark.parametrize(
    ("model", "installed"),
    [
        # Each runtime needs its own extra only, asked for once the format is known.
        (PYTORCH / "healthy.onnx", "onnxruntime"),
        # Formats nothing runs say why, with no extra at all.
        (PYTORCH / "healthy.safetensors", None),
        (PYTORCH / "healthy.pt", None),
        # Weights that run with --architecture: the probe asked for and not run fails the gate
        # (BN024), before any extra is needed.
        (FIXTURES / "eras/keras3_sharded.weights.json", None),
    ],
)
def test_a_probe_needs_only_its_runtimes_extra(
    model: Any,
    installed: str | None,
    run_cli: Callable[..., CliResult],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    missing = {"tensorflow", "keras", "onnxruntime", "torch"} - {installed}
    monkeypatch.setattr(extras, "find_spec", without(*missing))
    result = run_cli("inspect", model, "--probe", "--input-shape", "1,8,8", "--format", "json")
    [report] = result.json()["models"]
    assert report["error"] is None and result.err == ""
    needs_architecture = model.name.endswith(".weights.json")
    assert result.code == (1 if needs_architecture else 0)
    rules = {finding["rule"] for finding in report["findings"]}
    assert ("BN024" in rules) == needs_architecture
