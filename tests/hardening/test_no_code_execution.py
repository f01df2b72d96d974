"""No command runs code from a model file unless --unsafe is given.

Every canary model would create a file (or directory) if Keras rebuilt or ran its code; every
command bncheck has, pointed at every canary without --unsafe, must leave it uncreated. That the
bytecode canaries do fire under --unsafe is checked in tests/probe/test_probe.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FIXTURES, CliResult
from tests.hardening.canaries import function_reference_canaries, lambda_bytecode_canaries

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
        "checkpoint": (["checkpoint", model], {3}),
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
