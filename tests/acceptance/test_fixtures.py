"""Every committed fixture yields exactly the findings its generator declared, and the exit code
they imply. Adding a case is adding a fixture to a generator."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bncheck.readers.keras import keras3_shards
from tests.conftest import FIXTURES, CliResult, fixture_manifest

MANIFEST = fixture_manifest()
MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".pt", ".pth", ".bin", ".safetensors", ".onnx")


def test_every_model_fixture_is_declared() -> None:
    # Sharded weights are one model: their index, not each shard.
    on_disk = {
        path.relative_to(FIXTURES).as_posix()
        for path in FIXTURES.rglob("*")
        if path.is_file()
        and (path.name.endswith(MODEL_SUFFIXES) or keras3_shards.is_index(path))
        and keras3_shards.index_of_shard(path) is None
    }
    # Checkpoints and SavedModels are directories.
    on_disk |= {
        path.relative_to(FIXTURES).as_posix()
        for path in (FIXTURES / "checkpoints").iterdir()
        if path.is_dir()
    }
    assert on_disk, "no fixtures found"
    assert on_disk <= set(MANIFEST), (
        f"fixtures without expectations: {sorted(on_disk - set(MANIFEST))}"
    )


@pytest.mark.parametrize("fixture", sorted(MANIFEST))
def test_fixture_findings(fixture: str, run_cli: Callable[..., CliResult]) -> None:
    expected = MANIFEST[fixture]
    result = run_cli("inspect", FIXTURES / fixture, "--format", "json", "--fail-on", "error")
    report = result.json()
    model = report["models"][0]
    assert model["error"] is None
    assert len(model["layers"]) == expected["layers"]
    assert sorted([f["rule"], f["layer"]] for f in model["findings"]) == expected["expect"]
    if "coverage" in expected:
        bn_layers, with_moving_stats = expected["coverage"]
        assert model["coverage"] == {"bn_layers": bn_layers, "with_moving_stats": with_moving_stats}
    else:
        assert model["coverage"] is None
    expected_rules = {rule for rule, _ in expected["expect"]}
    fails = any(f["severity"] == "error" for f in model["findings"])
    assert result.code == (1 if fails else 0)
    assert report["exit_code"] == result.code
    if not expected_rules:
        assert model["findings"] == []
