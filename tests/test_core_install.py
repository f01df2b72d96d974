"""The core install, without TensorFlow, reads every format (about 20 seconds).

bncheck is built into a wheel and installed with ``--no-deps`` into a fresh virtual environment
that has no pip of its own. Its core dependencies, as ``pyproject.toml`` declares them, are the
ones already installed here, linked into a folder the environment sees through a ``.pth`` file:
nothing is downloaded, and TensorFlow, Keras and matplotlib are not there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.conftest import FIXTURES, REPO

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

pytestmark = pytest.mark.core_install

#: One model of each format: .keras, legacy .h5 (Keras 3 and 2), weights-only, TF1 and TF2
#: checkpoints, tf.keras TF-format weights, and both kinds of SavedModel.
EVERY_FORMAT = [
    "keras3/nested.keras",
    "keras3/nested.h5",
    "keras2/nested.h5",
    "weights/nested.weights.h5",
    "checkpoints/tf1_saver_all",
    "checkpoints/keras3_object",
    "checkpoints/tfkeras_weights",
    "checkpoints/keras3_export",
    "checkpoints/tfkeras_savedmodel",
]
HEAVY = ("tensorflow", "keras", "tf_keras", "matplotlib")


def core_requirements() -> list[str]:
    """The distributions the core install needs here: pyproject's dependencies, and theirs."""
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pending = [Requirement(text) for text in declared]
    needed: list[str] = []
    while pending:
        requirement = pending.pop()
        marker = requirement.marker
        if marker is not None and not marker.evaluate({"extra": ""}):
            continue
        if requirement.name not in needed:
            needed.append(requirement.name)
            pending += [Requirement(r) for r in metadata.requires(requirement.name) or []]
    return needed


def link_distributions(names: list[str], target: Path) -> None:
    """Link each distribution's top-level files and folders into ``target``; inside namespace
    folders (``google/``), only the distribution's own."""
    target.mkdir()
    for name in names:
        distribution = metadata.distribution(name)
        for file in distribution.files or []:
            if file.parts[0] == "..":
                continue
            source = Path(str(distribution.locate_file(file.parts[0])))
            depth = 2 if source.is_dir() and not _is_package_or_data(source) else 1
            link = target.joinpath(*file.parts[:depth])
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(str(distribution.locate_file(Path(*file.parts[:depth]))))


def _is_package_or_data(path: Path) -> bool:
    return (path / "__init__.py").exists() or path.suffix in (".libs", ".dist-info")


@pytest.fixture(scope="module")
def core_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding bncheck and its core dependencies only."""
    root = tmp_path_factory.mktemp("core")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "bncheck"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True
    )
    [wheel] = wheels.glob("bncheck-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    subprocess.run(
        [*pip, "--python", python, "install", "--no-deps", "--no-index", wheel], check=True
    )
    link_distributions(core_requirements(), root / "core")
    [site_packages] = venv.glob("lib/python*/site-packages")
    (site_packages / "bncheck_core_dependencies.pth").write_text(f"{root / 'core'}\n")
    return venv


def run_in(venv: Path, *args: object) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        cwd=venv,  # not the checkout, whose bncheck/ would shadow the installed one
        env=environment,
        check=False,
    )


def test_the_wheel_requires_the_core_only(core_env: Path) -> None:
    [wheel] = core_env.parent.joinpath("wheels").glob("bncheck-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        lines = archive.read(name).decode().splitlines()
    required = [
        line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")
    ]
    core = sorted(Requirement(r).name for r in required if "extra ==" not in r)
    assert core == ["click", "h5py", "numpy", "protobuf", "tabulate", "tomli"]
    extras = {r.split("extra ==")[1].strip(" '\"") for r in required if "extra ==" in r}
    assert {"tensorflow", "plot", "test"} <= extras


def test_tensorflow_keras_and_matplotlib_are_absent(core_env: Path) -> None:
    probe = "import importlib.util as u, sys; print([m for m in sys.argv[1:] if u.find_spec(m)])"
    done = run_in(core_env, core_env / "bin" / "python", "-c", probe, *HEAVY)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_format_reads_as_with_the_full_install(core_env: Path) -> None:
    paths = [FIXTURES / fixture for fixture in EVERY_FORMAT]
    args = ["inspect", *paths, "--format", "json", "--fail-on", "never"]
    done = run_in(core_env, core_env / "bin" / "bncheck", *args)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    report = json.loads(done.stdout)
    assert [model["error"] for model in report["models"]] == [None] * len(paths)
    assert all(model["layers"] for model in report["models"])
    full = subprocess.run(
        [sys.executable, "-m", "bncheck", *map(str, args)], capture_output=True, text=True
    )
    assert report == json.loads(full.stdout)


def test_checkpoint_command(core_env: Path) -> None:
    checkpoints = FIXTURES / "checkpoints"
    done = run_in(
        core_env,
        core_env / "bin" / "bncheck",
        "checkpoint",
        checkpoints / "keras3_object",
        "--model",
        checkpoints / "keras3_cnn.keras",
    )
    assert done.returncode == 0, done.stderr
    assert "2/2 BN layers of the model have moving statistics in the checkpoint" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["inspect", "keras3/nested.keras", "--probe"],
            '--probe needs TensorFlow: pip install "bncheck[tensorflow]"',
        ),
        # The probe asks for the extra of the file's own runtime.
        (
            ["inspect", "pytorch/healthy.onnx", "--probe"],
            '--probe needs onnxruntime: pip install "bncheck[onnx]"',
        ),
        (
            ["plot", "keras3/nested.keras", "-o", "x.png"],
            'bncheck plot needs matplotlib: pip install "bncheck[plot]"',
        ),
    ],
)
def test_commands_needing_an_extra_name_the_install(
    core_env: Path, args: list[str], message: str
) -> None:
    done = run_in(core_env, core_env / "bin" / "bncheck", *[args[0], FIXTURES / args[1], *args[2:]])
    assert done.returncode == 2
    assert done.stderr == f"bncheck: error: {message}\n"
    assert done.stdout == ""
