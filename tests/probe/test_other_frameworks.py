"""The probe runs ONNX models with onnxruntime and TorchScript archives with PyTorch (--unsafe),
and says why it cannot run a state dict, a safetensors file or a pickled model. Keras and
TensorFlow are never imported for them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES, CliResult

Run = Callable[..., CliResult]
PYTORCH = FIXTURES / "pytorch"
DATA = FIXTURES / "data/digits_nchw_heldout.npy"


def probed(run_cli: Run, fixture: str, *options: object) -> tuple[dict[str, Any], set[str], int]:
    result = run_cli("inspect", PYTORCH / fixture, "--format", "json", *options)
    model = result.json()["models"][0]
    assert model["error"] is None, model["error"]
    probe_rules = {"BN013", "BN014", "BN015", "BN016", "BN017"}
    return model, {f["rule"] for f in model["findings"] if f["rule"] in probe_rules}, result.code


def test_a_healthy_onnx_model_passes_in_both_modes(run_cli: Run) -> None:
    model, rules, code = probed(run_cli, "healthy.onnx", "--data", DATA)
    probe = model["probe"]
    assert probe["loader"] == "onnxruntime" and probe["modes"] == ["inference", "training"]
    assert [layer["path"] for layer in probe["layers"]] == ["stem.1", "layer1.bn1"]
    # Each node infers with its stored statistics: the probe's own check of that is round-off.
    assert all(layer["moving_stats_error"] < 1e-5 for layer in probe["layers"])
    assert rules == set() and code == 0


def test_inflated_variance_collapses_in_inference_mode(run_cli: Run) -> None:
    model, rules, _ = probed(run_cli, "inflated_variance.onnx", "--probe")
    [collapse] = [f for f in model["findings"] if f["rule"] == "BN013"]
    assert collapse["layer"] == "layer1.bn1"
    assert collapse["details"]["inference_spread"] < 1e-3 < collapse["details"]["training_spread"]


def test_training_mode_nodes_make_inference_batch_dependent(run_cli: Run) -> None:
    model, rules, _ = probed(run_cli, "training_mode.onnx", "--probe")
    assert "BN016" in rules
    [finding] = [f for f in model["findings"] if f["rule"] == "BN016"]
    assert set(finding["details"]["layers"]) == {"stem.1", "layer1.bn1"}
    # The rewritten training-mode graph computes what onnxruntime's training_mode=1 computes.
    [output] = model["probe"]["outputs"]
    assert output["relative_error"] < 1e-5


def test_stored_statistics_are_judged_against_real_data(run_cli: Run) -> None:
    """Inflated variances are stale statistics (BN014); statistics a network trained in eval()
    mode never updated are BN001's, and the population estimate is no reference for them."""
    model, rules, _ = probed(run_cli, "inflated_variance.onnx", "--data", DATA)
    assert "BN014" in rules
    [stale] = [f for f in model["findings"] if f["rule"] == "BN014"][:1]
    assert stale["details"]["variance_factor"] > 2
    model, rules, _ = probed(run_cli, "eval_trained.onnx", "--data", DATA)
    assert "BN014" not in rules
    assert {f["rule"] for f in model["findings"]} >= {"BN001"}


def test_a_folded_model_runs_in_inference_mode_only(run_cli: Run) -> None:
    model, rules, code = probed(run_cli, "healthy_folded.onnx", "--probe")
    assert model["probe"]["modes"] == ["inference"] and rules == set() and code == 0
    assert any("no training mode" in note for note in model["probe"]["notes"])
    # With labels, the one figure there is: no training mode is made up beside it.
    labels = FIXTURES / "data/digits_nchw_heldout_labels.npy"
    model, _, _ = probed(run_cli, "healthy_folded.onnx", "--data", DATA, "--labels", labels)
    metric = model["probe"]["outputs"][0]["metric"]
    assert metric["stored"] > 0.9 and metric["training_mode"] is None
    assert any("--fail-under" in note for note in model["probe"]["notes"])


@pytest.mark.parametrize(
    ("fixture", "reason", "exit_code"),
    [
        ("healthy.pt", "a state dict holds no architecture to run", 0),
        ("healthy.safetensors", "tensors only, no architecture", 0),
        ("healthy_model.pt", "a pickled model needs its classes' code", 0),
        # A model bncheck could run when told to: BN017 fails the gate until it is.
        (
            "healthy_torchscript.pt",
            "pass --unsafe to run it if you trust the file and it was "
            "scripted (torch.jit.script): a traced archive (torch.jit.trace) cannot be measured",
            1,
        ),
    ],
)
def test_files_that_cannot_be_run_say_why(
    run_cli: Run, fixture: str, reason: str, exit_code: int
) -> None:
    model, _, code = probed(run_cli, fixture, "--probe", "--input-shape", "1,8,8")
    assert model["probe"]["ran"] is False and reason in model["probe"]["skipped"]
    assert code == exit_code


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("healthy_torchscript.pt", set()),
        ("inflated_variance_torchscript.pt", {"BN013"}),
        ("batch_stats_torchscript.pt", {"BN016"}),
    ],
)
def test_torchscript_probe(run_cli: Run, fixture: str, expected: set[str]) -> None:
    pytest.importorskip("torch", reason="running TorchScript needs the torch extra")
    model, rules, _ = probed(run_cli, fixture, "--probe", "--unsafe", "--input-shape", "1,8,8")
    assert model["probe"]["loader"] == "torch.jit"
    assert rules - {"BN017"} == expected
    assert "BN017" in rules  # the code ran because --unsafe said so


def test_torchscript_needs_input_shapes(run_cli: Run) -> None:
    pytest.importorskip("torch", reason="running TorchScript needs the torch extra")
    result = run_cli("inspect", PYTORCH / "healthy_torchscript.pt", "--probe", "--unsafe")
    assert result.code == 2 and "declares no input shapes" in result.err


PROBE_ONNX = """
import sys
from bncheck.cli import main
try:
    main(["inspect", sys.argv[1], "--probe", "--format", "json"])
except SystemExit as done:
    print("EXIT", done.code, file=sys.stderr)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "torch"))
print("HEAVY", heavy, file=sys.stderr)
"""


def test_probing_onnx_imports_neither_tensorflow_nor_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE_ONNX, str(PYTORCH / "healthy.onnx")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "EXIT 0" in done.stderr and "HEAVY []" in done.stderr, done.stderr


def test_a_missing_onnxruntime_is_a_usage_error_naming_the_extra(
    run_cli: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = run_cli("inspect", PYTORCH / "healthy.onnx", "--probe")
    assert result.code == 2
    assert result.err == 'bncheck: error: --probe needs onnxruntime: pip install "bncheck[onnx]"\n'


@pytest.mark.parametrize("fixture", ["healthy.pt", "healthy.safetensors"])
def test_recalibrate_asks_for_a_runnable_export_of_a_state_dict(
    run_cli: Run, fixture: str, tmp_path: Any
) -> None:
    output = tmp_path / fixture
    result = run_cli("recalibrate", PYTORCH / fixture, "--data", DATA, "-o", output)
    assert result.code == 2 and "give --runnable FILE" in result.err
    assert not output.exists()


@pytest.mark.parametrize("fixture", ["healthy.onnx", "healthy.pt"])
@pytest.mark.parametrize("over", ["--in-place", "-o"], ids=["in-place", "output-is-model"])
def test_recalibrate_writes_other_frameworks_to_a_new_file_only(
    run_cli: Run, fixture: str, over: str
) -> None:
    """Asked to write over MODEL, one way or the other, the answer is the same, and offers no
    --in-place that would be refused in turn."""
    model = PYTORCH / fixture
    how = ["--in-place"] if over == "--in-place" else ["-o", model]
    result = run_cli("recalibrate", model, "--data", DATA, *how)
    assert result.code == 2
    called = "an ONNX model" if fixture.endswith("onnx") else "a PyTorch file"
    assert result.err == (
        f"bncheck: error: {model}: {called} is written to a new file, never over itself: give "
        "-o OUT naming another file\n"
    )


BLOCKED = """
import sys
for name in ("tensorflow", "keras", "torch", "tf_keras"):
    sys.modules[name] = None  # importing any of them now fails, here and in forked workers
from bncheck.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("EXIT", done.code, file=sys.stderr)
"""


def test_recalibrating_onnx_needs_neither_tensorflow_nor_torch(tmp_path: Any) -> None:
    out = tmp_path / "out.onnx"
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED, "recalibrate", str(PYTORCH / "healthy.onnx")]
        + ["--data", str(DATA), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "EXIT 0" in done.stderr or "EXIT 1" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "re-estimated" in done.stdout, done.stdout


def test_options_that_fit_one_model_of_a_folder_fail_only_the_others(
    run_cli: Run, tmp_path: Path
) -> None:
    """A TorchScript archive needs --input-shape, which a Keras model refuses: in one folder the
    Keras model fails alone, its static report kept, and the archive is probed."""
    pytest.importorskip("torch", reason="running TorchScript needs the torch extra")
    folder = tmp_path / "mixed"
    folder.mkdir()
    for source in (PYTORCH / "healthy_torchscript.pt", FIXTURES / "probe/stale_stats.keras"):
        shutil.copy(source, folder)
    result = run_cli(
        "inspect", folder, "--probe", "--unsafe", "--input-shape", "1,8,8", "--format", "json"
    )
    assert result.code == 3
    models = {Path(model["path"]).name: model for model in result.json()["models"]}
    archive, keras = models["healthy_torchscript.pt"], models["stale_stats.keras"]
    assert archive["error"] is None and archive["probe"]["ran"] is True
    assert keras["error"].startswith("probe: --input-shape 1,8,8 does not fit input 'image'")
    assert keras["layers"] and keras["probe"] is None
    summary = result.json()["summary"]
    assert (summary["models"], summary["unreadable"], summary["probe_failed"]) == (2, 0, 1)
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: ") and "stale_stats.keras: probe: --input-shape" in line


def test_options_that_fit_no_model_of_a_folder_stay_a_usage_error(
    run_cli: Run, tmp_path: Path
) -> None:
    folder = tmp_path / "keras"
    folder.mkdir()
    for name in ("stale_stats.keras", "stale_stats.h5"):
        shutil.copy(FIXTURES / "probe" / name, folder)
    result = run_cli("inspect", folder, "--probe", "--input-shape", "1,8,8", "--format", "json")
    assert result.code == 2 and result.out == ""
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: --input-shape 1,8,8 does not fit input 'image'")
