from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bncheck.cli import main

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "fixtures"

# The processes the suite starts (its workers, the commands it runs in subprocesses, warm
# servers, each case of the hostile corpus) run bncheck from byte-compiled modules, as an
# installed package does, cached in a folder of this session's own: where the environment sets
# PYTHONDONTWRITEBYTECODE, each of them would otherwise compile bncheck's sources again.
_PYCACHE: str | None = None
"""The cache this session made (and removes), if it made one."""
if (
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None) is not None
    and "PYTHONPYCACHEPREFIX" not in os.environ
):
    _PYCACHE = os.environ["PYTHONPYCACHEPREFIX"] = tempfile.mkdtemp(prefix="bncheck-pycache-")


# Each pytest-xdist worker gets one core's worth of threads: TensorFlow's, torch's and OpenMP's
# pools would otherwise each take every core, and the workers' pools (and those of the processes
# they start) would contend for the same cores. Set before either framework is imported.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"):
        os.environ.setdefault(_name, "1")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _PYCACHE is not None and not hasattr(config, "workerinput"):  # the session, not a worker
        shutil.rmtree(_PYCACHE, ignore_errors=True)


@dataclass(frozen=True)
class CliResult:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``bncheck ARGS...`` in-process through the real entry point."""

    def run(*args: object) -> CliResult:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(int(exit_info.value.code or 0), captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every process of this test session sees (with pytest-xdist, the workers'
    common temporary root), for what costs seconds to make and may be made once: trained
    models, keyed by their recipe."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's root; each worker's basetemp is one of its folders
    return root / "shared-cache"


def fixture_manifest() -> dict[str, dict[str, Any]]:
    """Every fixture with its declared expectations, from the generators' manifests."""
    entries: dict[str, dict[str, Any]] = {}
    for manifest in sorted(FIXTURES.glob("manifest-*.json")):
        entries.update(json.loads(manifest.read_text()))
    return entries


def user_module(path: Path, source: str) -> ModuleType:
    """Write a user's Python file (custom layers, as passed with --custom-objects) and import
    it, so that a test can build and save a model with its classes."""
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
