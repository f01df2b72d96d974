"""Recalibration through ``tf.distribute`` gives the statistics of one device on the same
batches: the CPU split into 2 and 4 logical devices under ``MirroredStrategy``, and two workers
on localhost under ``MultiWorkerMirroredStrategy``, each in processes of their own (logical
devices and a cluster must be set up before TensorFlow starts).

Equal means: every variance within 1e-5 of the single-device one, relative; every mean within
1e-5 of the channel's scale (its standard deviation, or the mean itself when larger), since a
mean near zero has no relative precision of its own. What is left is float32 rounding: the
replicas sum their moments in another order than one device does.

Two logical devices run by default; four, and the two-worker cluster, are marked slow (each a
group of processes that imports TensorFlow) and run in CI.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

from bncheck.readers import read_model
from tests.conftest import FIXTURES, REPO, CliResult
from tests.recalibrate.replicas import CASES, branched_model, run_cases

#: Each group of processes is stopped after this long, whatever it is doing.
DEADLINE = 420
TOLERANCE = 1e-5
DIGITS = FIXTURES / "data/digits_0_1.npy"
LABELS = FIXTURES / "data/digits_0_1_labels.npy"
STALE = FIXTURES / "probe/stale_stats.keras"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("replicas")
    branched_model(folder / "branched.keras")
    return folder


def assert_equal_statistics(
    found: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray], prefix: tuple[str, str]
) -> None:
    """``found[prefix[0]/...]`` equals ``reference[prefix[1]/...]`` (see the module's doc)."""
    ours, theirs = prefix
    keys = sorted(key[len(ours) :] for key in found if key.startswith(ours))
    assert keys and keys == sorted(
        key[len(theirs) :] for key in reference if key.startswith(theirs)
    )
    for key in keys:
        if key.endswith("/size"):
            assert np.array_equal(found[ours + key], reference[theirs + key]), key
    for key in (key for key in keys if key.endswith("/mean")):
        layer = key[: -len("/mean")]
        mean, variance = found[ours + key], found[ours + layer + "/variance"]
        single = reference[theirs + key], reference[theirs + layer + "/variance"]
        scale = np.maximum(np.sqrt(single[1]), np.abs(single[0]))
        assert np.all(np.abs(mean - single[0]) <= TOLERANCE * scale), key
        np.testing.assert_allclose(variance, single[1], rtol=TOLERANCE, err_msg=layer)
    for key in (key for key in keys if key.endswith("/verification")):
        # The samples verified on, the metric before and after, the changed predictions: the
        # same, but for at most one sample whose top class is a near tie.
        expected = reference[theirs + key][:4]
        np.testing.assert_allclose(
            found[ours + key][:4], expected, rtol=0, atol=1.0 / expected[0], err_msg=key
        )


def run_group(commands: Sequence[list[str]], envs: Sequence[Mapping[str, str]]) -> list[str]:
    """Run the commands at once from the repository root, each in a session of its own that is
    killed at the deadline; their standard outputs, after checking each succeeded."""
    processes = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**os.environ, **env},
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for command, env in zip(commands, envs, strict=True)
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=DEADLINE)
            assert process.returncode == 0, err[-3000:]
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return outputs


@pytest.mark.parametrize("replicas", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_logical_devices_give_the_single_device_statistics(
    replicas: int, workdir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "found.npz"
    [printed] = run_group(
        [[sys.executable, "-m", "tests.recalibrate.replicas", "mirrored", str(replicas),
          str(out), str(workdir)]],
        [{}],
    )  # fmt: skip
    found = dict(np.load(out))
    for case in CASES:
        assert_equal_statistics(found, found, (f"{case}/replicas", f"{case}/single"))
    assert set(json.loads(printed.strip().splitlines()[-1])) == {
        f"{case}/{label}" for case in CASES for label in ("single", "replicas")
    }


@contextlib.contextmanager
def free_ports(count: int) -> Iterator[list[int]]:
    """Ports on 127.0.0.1 nobody listens on, held until the block starts using them."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for held in sockets:
            held.bind(("127.0.0.1", 0))
        ports = [held.getsockname()[1] for held in sockets]
    finally:
        for held in sockets:
            held.close()
    yield ports


def cluster(ports: Sequence[int]) -> list[dict[str, str]]:
    workers = [f"127.0.0.1:{port}" for port in ports]
    return [
        {"TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                  "task": {"type": "worker", "index": index}})}
        for index in range(len(workers))
    ]  # fmt: skip


@pytest.mark.slow
def test_two_workers_give_the_single_device_statistics(workdir: Path, tmp_path: Path) -> None:
    outs = [tmp_path / f"worker{index}.npz" for index in range(2)]
    with free_ports(2) as ports:
        run_group(
            [[sys.executable, "-m", "tests.recalibrate.replicas", "worker", str(out),
              str(workdir)] for out in outs],
            cluster(ports),
        )  # fmt: skip
    single: dict[str, np.ndarray] = {}
    run_cases(workdir, None, "single", single)
    for out in outs:
        found = dict(np.load(out))
        for case in CASES:
            assert_equal_statistics(found, single, (f"{case}/replicas", f"{case}/single"))


@pytest.mark.slow
def test_the_chief_writes_and_the_other_worker_says_so(
    run_cli: Callable[..., CliResult], tmp_path: Path
) -> None:
    """``bncheck recalibrate --strategy multi-worker`` run on each worker of a cluster."""
    out = tmp_path / "fixed.keras"
    arguments = [str(STALE), "--data", str(DIGITS), "--labels", str(LABELS), "-o", str(out)]
    with free_ports(2) as ports:
        chief, other = run_group(
            [[sys.executable, "-m", "bncheck", "recalibrate", *arguments,
              "--strategy", "multi-worker"]] * 2,
            cluster(ports),
        )  # fmt: skip
    assert f"wrote {out}" in chief and chief.rstrip().splitlines()[-1].startswith("OK")
    assert f"not written here: the chief writes {out}" in other.splitlines()
    assert chief.splitlines()[:8] == other.splitlines()[:8]  # the same changes, the same check
    alone = tmp_path / "alone.keras"
    result: CliResult = run_cli("recalibrate", *arguments[:-1], alone)
    assert result.code == 0
    found = {
        f"w/{layer.path}/{name}": getattr(layer, f"moving_{name}")
        for layer in read_model(str(out)).layers
        for name in ("mean", "variance")
    }
    reference = {
        f"s/{layer.path}/{name}": getattr(layer, f"moving_{name}")
        for layer in read_model(str(alone)).layers
        for name in ("mean", "variance")
    }
    assert_equal_statistics(found, reference, ("w", "s"))


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--devices", "/cpu:0"], {}, "--devices needs --strategy mirrored"),
        (["--strategy", "multi-worker"], {"TF_CONFIG": ""}, "TF_CONFIG environment variable"),
        (["--strategy", "multi-worker"], {"TF_CONFIG": "{not json"}, "TF_CONFIG is not"),
        (["--strategy", "multi-worker", "--devices", "/cpu:0"], {"TF_CONFIG": "{}"},
         "--devices applies to --strategy mirrored"),
        (["--strategy", "mirrored", "--devices", "/gpu:7"], {}, "--devices /gpu:7: "),
        (["--strategy", "ring"], {}, "'ring' is not one of 'mirrored', 'multi-worker'"),
    ],
)  # fmt: skip
def test_strategy_mistakes_are_one_line(
    run_cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    args: list[str],
    env: dict[str, str], message: str,
) -> None:  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = run_cli("recalibrate", STALE, "--data", DIGITS, "-o", tmp_path / "o.keras", *args)
    assert result.code == 2, result.err + result.out
    [line] = result.err.strip().splitlines()
    assert line.startswith("bncheck: error: ") and message in line
    assert list(tmp_path.iterdir()) == []
