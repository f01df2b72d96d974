"""Folders of models: searched recursively, models recognised by content, one aggregated report
and exit code, the same with ``--jobs``."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from bncheck.engine import NO_MODELS
from tests.conftest import FIXTURES, CliResult, fixture_manifest

Run = Callable[..., CliResult]
NOT_MODELS = (".py", ".json", ".txt", ".md", ".toml")


def test_the_fixtures_folder_yields_every_declared_model_with_its_findings(run_cli: Run) -> None:
    result = run_cli("inspect", FIXTURES, "--format", "json", "--fail-on", "never")
    models = result.json()["models"]
    paths = [model["path"] for model in models]
    assert paths == sorted(paths, key=lambda p: Path(p).parts)
    found = {Path(model["path"]).relative_to(FIXTURES).as_posix(): model for model in models}
    assert not [
        path for path in found if path.endswith(NOT_MODELS) and not path.endswith(".weights.json")
    ]
    manifest = fixture_manifest()
    assert set(manifest) <= set(found)
    for name, expected in manifest.items():
        findings = sorted([f["rule"], f["layer"]] for f in found[name]["findings"])
        assert findings == expected["expect"], name


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Models under other names and in sub-folders, among files that are not models."""
    root = tmp_path / "models"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / "saved").mkdir()
    shutil.copy(FIXTURES / "keras3/healthy_cnn.keras", root / "a/healthy.keras")
    shutil.copy(FIXTURES / "keras3/untouched_stats.keras", root / "a/b/disguised.bin")
    shutil.copy(FIXTURES / "weights/nested.weights.h5", root / "weights.dat")
    shutil.copy(FIXTURES / "keras3/untouched_stats.keras", root / ".hidden/skipped.keras")
    data = (FIXTURES / "keras3/healthy_cnn.keras").read_bytes()
    (root / "broken.keras").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not a model\n")
    (root / "saved/saved_model.pb").write_bytes(b"\x08\x01")  # a SavedModel directory
    (root / "saved/variables").mkdir()
    shutil.copy(FIXTURES / "keras3/healthy_cnn.keras", root / "saved/variables/inside.keras")
    with zipfile.ZipFile(root / "data.zip", "w") as archive:
        archive.writestr("readme.txt", "a zip archive without config.json")
    os.symlink(root / "a", root / "a/b/loop")
    return root


def test_a_folder_is_searched_by_content(run_cli: Run, mixed_folder: Path) -> None:
    result = run_cli("inspect", mixed_folder, "--format", "json")
    models = result.json()["models"]
    relative = [Path(model["path"]).relative_to(mixed_folder).as_posix() for model in models]
    assert relative == [
        "a/b/disguised.bin",
        "a/healthy.keras",
        "broken.keras",
        "saved",
        "weights.dat",
    ]
    formats = {path: model["format"] for path, model in zip(relative, models, strict=True)}
    assert formats["a/b/disguised.bin"] == "keras"
    assert formats["weights.dat"] == "weights-h5"
    assert [m["findings"][0]["rule"] for m in models if m["findings"]] == ["BN001"]
    unreadable = [path for path, model in zip(relative, models, strict=True) if model["error"]]
    # "saved" is one model, never searched: a SavedModel without variables (a frozen graph's
    # layout), read with a note; the .keras file in its variables/ folder is not a model of its own.
    assert unreadable == ["broken.keras"]
    saved = models[relative.index("saved")]
    assert saved["format"] == "savedmodel" and saved["layers"] == []
    assert any("holds no variables" in note for note in saved["notes"])
    assert result.code == 3  # the worst outcome over the folder
    assert len(result.err.splitlines()) == len(unreadable)  # one line per unreadable input


def test_jobs_give_the_same_report(run_cli: Run, mixed_folder: Path) -> None:
    serial = run_cli("inspect", mixed_folder, FIXTURES / "keras3", "--format", "json")
    parallel = run_cli("inspect", mixed_folder, FIXTURES / "keras3", "--format", "json", "-j", "2")
    assert parallel.out == serial.out
    assert parallel.err == serial.err
    assert parallel.code == serial.code == 3


def test_folders_and_files_keep_the_order_given(run_cli: Run, tmp_path: Path) -> None:
    folder = tmp_path / "more"
    folder.mkdir()
    shutil.copy(FIXTURES / "keras3/dead_channels.keras", folder / "z.keras")
    shutil.copy(FIXTURES / "keras3/healthy_cnn.keras", folder / "a.keras")
    single = FIXTURES / "keras3/pytorch_momentum.keras"
    report = run_cli("inspect", single, folder, "--format", "json").json()
    assert [m["path"] for m in report["models"]] == [
        str(single),
        str(folder / "a.keras"),
        str(folder / "z.keras"),
    ]
    assert report["summary"]["models"] == 3


def test_a_folder_without_models_is_an_error(run_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "readme.md").write_text("nothing to see\n")
    result = run_cli("inspect", tmp_path)
    assert result.code == 3
    assert result.err == f"bncheck: error: {tmp_path}: {NO_MODELS}\n"


def test_jobs_must_be_positive(run_cli: Run) -> None:
    result = run_cli("inspect", FIXTURES, "--jobs", "0")
    assert result.code == 2
    assert "--jobs" in result.err and len(result.err.splitlines()) == 1
