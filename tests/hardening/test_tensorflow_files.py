"""Hostile TensorFlow checkpoints and SavedModels (``hostile/tensorflow_files.py``): each is
refused in one line or reported correctly, in bounded memory, within a generous hang limit,
without importing TensorFlow, and without changing its files.

Every case runs in a child process under an address-space cap, so that a blow-up fails the
case instead of the test run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.hardening.hostile import HostileCase
from tests.hardening.hostile.tensorflow_files import CASES

REPO = Path(__file__).resolve().parents[2]
#: Only a hang fails on time: speed is for benchmarks, not for a loaded CI machine.
HANG_SECONDS = 120.0
_CHILD = """
import json, resource, sys
from tests.hardening._child import MEMORY_CAP, run
resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
outcome = run(sys.argv[1:])
outcome["tensorflow"] = "tensorflow" in sys.modules
sys.__stdout__.write(json.dumps(outcome))
"""

#: What the one error line says, for each refused case.
REASONS = {
    "ckpt-prefix-shared-keys": "a key of 16385 bytes, more than 16384",
    "ckpt-300k-entries": "more than 262144 entries",
    "ckpt-snappy-block-claims-4gb": "compressed blocks inflating to more than 8 MiB",
    "ckpt-80k-dimensions": "a shape of 80000 dimensions for bn/moving_mean",
    "ckpt-300-layers-on-one-64mb-region": "1200 BatchNorm arrays hold 20132659200 values",
    "ckpt-object-graph-20m-strings": "object graph is of shape [20000000], not one string",
    "ckpt-object-graph-160mb": "160000000 bytes, more than 8 MiB",
    "ckpt-object-graph-node-flood": "object graph holds more than 1048576 nodes",
    "savedmodel-40k-keras-object-chain": "nests a Keras object more than 64 objects deep",
    "ckpt-state-file-dot-dot": "records ../outside/victim, which leads outside",
    "ckpt-state-file-absolute": "outside/victim, which leads outside the checkpoint's folder",
    "ckpt-state-file-symlink": "records victim, which leads outside the checkpoint's folder",
    "savedmodel-variables-linked-outside": "variables leads outside the SavedModel's folder",
    "savedmodel-index-linked-outside": "variables.index leads outside the SavedModel's folder",
}


def fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def run_case(case: HostileCase, folder: Path) -> dict[str, Any]:
    args = list(case.build(folder))
    before = fingerprint(folder)
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, *args],
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS,
            cwd=REPO,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.name} hung for {HANG_SECONDS:g} s")
    assert done.returncode == 0, f"{case.name}: the child died: {done.stderr[-2000:]}"
    outcome: dict[str, Any] = json.loads(done.stdout)
    assert fingerprint(folder) == before, f"{case.name} changed its files"
    outcome["args"] = args
    return outcome


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_hostile_file_keeps_the_promises(case: HostileCase, tmp_path: Path) -> None:
    outcome = run_case(case, tmp_path)
    code, out, err = outcome["code"], outcome["out"], outcome["err"]
    assert "Traceback" not in out + err
    assert code in case.codes, f"exit {code}: {err}"
    assert outcome["max_rss_mib"] < case.max_rss_mib
    assert not outcome["tensorflow"], "the static path imported TensorFlow"
    if code == 3:
        lines = err.splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"bncheck: error: {outcome['args'][1]}: ")
        assert REASONS[case.name] in lines[0]
    else:
        assert case.name not in REASONS


def report(case_name: str, folder: Path) -> dict[str, Any]:
    case = next(case for case in CASES if case.name == case_name)
    outcome = run_case(case, folder)
    assert outcome["code"] in (0, 1), outcome["err"]
    model: dict[str, Any] = json.loads(outcome["out"])["models"][0]
    return model


def test_layers_on_one_region_are_each_reported(tmp_path: Path) -> None:
    """300 layers whose arrays share 16 KB of zeros: every layer, with its zeros."""
    model = report("ckpt-300-layers-on-one-16kb-region", tmp_path)
    layers = model["layers"]
    assert [layer["path"] for layer in layers] == [f"bn{n:03d}" for n in range(300)]
    assert {layer["channels"] for layer in layers} == {4096}
    assert {layer["moving_variance"]["max"] for layer in layers} == {0.0}


def test_a_40k_object_chain_and_a_40k_node_graph_are_read(tmp_path: Path) -> None:
    """The chain costs its length: the SavedModel's one BatchNorm layer is reported."""
    model = report("savedmodel-40k-object-chain", tmp_path)
    assert [layer["path"] for layer in model["layers"]] == ["bn"]
    assert model["layers"][0]["moving_variance"]["max"] == 1.0


def test_an_object_graph_of_empty_attributes_is_read(tmp_path: Path) -> None:
    """Under every cap, a million nameless attributes name no variable: no layer, no error."""
    model = report("ckpt-object-graph-string-flood", tmp_path)
    assert model["layers"] == []
