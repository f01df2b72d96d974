"""No command runs code from a model file unless --unsafe is given.

Every canary model would create a file (or directory) if Keras rebuilt or ran its code; every
command bncheck has, pointed at every canary without --unsafe, must leave it uncreated.

Which canaries can fire: the three Lambda-bytecode canaries do run their code when loaded with
``--unsafe`` (``test_the_bytecode_canaries_fire_with_unsafe``), so their staying silent without it
is bncheck's doing. The four function-reference canaries (the CVE-2025-1550 and CVE-2025-9906
shapes) cannot fire on the installed Keras 3.15 at all: Keras refuses them even with
``safe_mode=False`` (``test_keras_itself_refuses_the_function_reference_canaries``). For them these
tests check only that bncheck refuses them before Keras sees them (BN017, the probe skipped), as
it must for the older Keras versions that did run them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, CliResult
from tests.hardening.canaries import (
    function_reference_canaries,
    lambda_bytecode_canaries,
    pickle_canaries,
)

Run = Callable[..., CliResult]


@pytest.fixture(scope="module")
def canaries(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("canaries")
    canary = directory / "canary"
    paths = lambda_bytecode_canaries(directory, canary)
    paths += function_reference_canaries(directory, canary)
    return canary, paths


def commands(model: Path, work: Path) -> dict[str, tuple[list[object], set[int]]]:
    """Each command on ``model``, with the exit codes it may give."""
    data = work / "data.npy"
    np.save(data, np.random.default_rng(0).standard_normal((16, 4)).astype("float32"))
    return {
        "inspect": (["inspect", model], {0, 1}),
        "inspect --probe": (["inspect", model, "--probe"], {0, 1}),
        "checkpoint": (["checkpoint", model], {2}),  # a model, not a checkpoint: does not apply
        "checkpoint --model": (
            ["checkpoint", FIXTURES / "checkpoints/keras3_object", "--model", model],
            {0, 1},
        ),
        "recalibrate": (["recalibrate", model, "--data", data, "-o", work / "out.keras"], {2}),
        "plot --probe": (["plot", model, "--probe", "-o", work / "plot.png"], {0}),
    }


def test_no_command_runs_code_from_a_model_file(
    canaries: tuple[Path, list[Path]],
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary, models = canaries
    monkeypatch.setenv("BNCHECK_CANARY", str(canary))
    assert len(models) == 7
    for model in models:
        for name, (args, codes) in commands(model, tmp_path).items():
            result = run_cli(*args)
            assert not canary.exists(), f"{name} ran code from {model.name}"
            assert result.code in codes, f"{name} on {model.name}: {result.code} {result.err}"
            assert "Traceback" not in result.err


def test_the_bytecode_canaries_fire_with_unsafe(
    canaries: tuple[Path, list[Path]], run_cli: Run
) -> None:
    canary, models = canaries
    bytecode = [model for model in models if model.name.startswith("bytecode")]
    assert len(bytecode) == 3
    for model in bytecode:
        result = run_cli("inspect", model, "--probe", "--unsafe", "--format", "json")
        assert result.json()["models"][0]["probe"]["ran"] is True
        assert canary.exists(), f"{model.name} did not run its code under --unsafe"
        canary.unlink()


def test_keras_itself_refuses_the_function_reference_canaries(
    canaries: tuple[Path, list[Path]], run_cli: Run
) -> None:
    """With --unsafe bncheck hands these to Keras, which refuses them: they only check that
    bncheck refuses them first."""
    canary, models = canaries
    references = [model for model in models if not model.name.startswith("bytecode")]
    assert len(references) == 4
    for model in references:
        result = run_cli("inspect", model, "--probe", "--unsafe")
        assert not canary.exists(), model.name
        assert result.code == 3, (model.name, result.err)
        assert "Keras cannot load the model" in result.err, model.name


def test_the_probe_names_what_it_refused(canaries: tuple[Path, list[Path]], run_cli: Run) -> None:
    _, models = canaries
    expected = {
        "foreign_activation": "function tests.hardening.canary_module.touch",
        "keras_utility": "Lambda layer calling keras.src.utils.file_utils.makedirs",
        "bytecode": "Lambda layer",
    }
    for model in models:
        report = run_cli("inspect", model, "--probe", "--format", "json").json()["models"][0]
        assert report["probe"]["ran"] is False
        assert "pass --unsafe" in report["probe"]["skipped"]
        [bn017] = [f for f in report["findings"] if f["rule"] == "BN017"]
        [what] = [text for key, text in expected.items() if model.name.startswith(key)]
        assert what in bn017["message"], (model.name, bn017["message"])


@pytest.fixture(scope="module")
def pickles(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("pickle_canaries")
    canary = directory / "canary"
    return canary, pickle_canaries(directory, canary)


# torch.load's unpickling, with PyTorch's own rebuilders replaced by stubs: everything else the
# pickle names is imported and called, as torch.load(weights_only=False) does.
PICKLE_RUNNER = """
import pickle, sys, zipfile
class Unpickler(pickle.Unpickler):
    def persistent_load(self, pid):
        return None
    def find_class(self, module, name):
        if module.split(".")[0] == "torch":
            return lambda *arguments: None
        return super().find_class(module, name)
with zipfile.ZipFile(sys.argv[1]) as archive:
    name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
    try:
        Unpickler(archive.open(name)).load()
    except Exception:
        pass  # the tensor rebuilders are absent; the canary has fired or not by then
"""


def test_the_pickle_canaries_are_live(pickles: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """Python's own unpickler (what torch.load runs) fires each zip canary: the tests below
    would catch bncheck doing the same."""
    canary, models = pickles
    for model in models:
        if not zipfile.is_zipfile(model) or model.name == "wrapped.pt":
            continue  # wrapped.pt needs torch's rebuilder to reach its call
        subprocess.run(
            [sys.executable, "-c", PICKLE_RUNNER, str(model)],
            env={**os.environ, "BNCHECK_CANARY": str(canary)},
            cwd=Path(__file__).resolve().parents[2],
            check=True,
            timeout=60,
        )
        assert canary.exists(), f"{model.name} does not fire"
        canary.unlink()


def test_no_command_runs_a_pickle_not_even_with_unsafe(
    pickles: tuple[Path, list[Path]],
    run_cli: Run,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    canary, models = pickles
    monkeypatch.setenv("BNCHECK_CANARY", str(canary))
    assert len(models) == 8
    for model in models:
        runs = dict(commands(model, tmp_path))
        runs["inspect --probe --unsafe"] = (["inspect", model, "--probe", "--unsafe"], {0, 1})
        runs["recalibrate"] = (runs["recalibrate"][0], {2})  # not a format it writes
        for name, (args, codes) in runs.items():
            result = run_cli(*args)
            assert not canary.exists(), f"{name} ran code from {model.name}"
            assert result.code in codes, f"{name} on {model.name}: {result.code} {result.err}"
            assert "Traceback" not in result.err


def test_the_report_names_each_call(pickles: tuple[Path, list[Path]], run_cli: Run) -> None:
    _, models = pickles
    expected = {
        "system.pt": "posix.system",
        "exec.pth": "builtins.exec",
        "popped.pt": "posix.system",
        "wrapped.pt": "posix.system",
        "legacy.pt": "posix.system",
        "content.bin": "posix.system",
        "torchscript.pt": "posix.system",
    }
    for model in models:
        report = run_cli("inspect", model, "--format", "json").json()["models"][0]
        assert report["error"] is None and len(report["layers"]) == 1, model.name
        calls = [f for f in report["findings"] if f["rule"] == "BN019"]
        if model.name == "setstate.pt":  # an instance, not a call: named in a note
            assert not calls
            assert any("canary_module.Touches" in note for note in report["notes"])
            continue
        [finding] = calls
        assert finding["details"]["calls"][0]["target"] == expected[model.name], model.name
