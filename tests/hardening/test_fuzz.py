"""Seeded fuzzing of every format bncheck reads.

Each format's fixture is mutated a few hundred times (byte flips, overwritten and zeroed ranges,
integers planted where sizes and offsets live, truncations, inserted and deleted chunks), always
the same way for the same seed. One child process per format inspects every mutant under an
address-space cap while this process samples the memory of its whole process tree. Every run must
give a valid report or one error line naming its input, never a traceback, and no file may
change. The default run reads the first 40 mutants of each format; all of them (200, or
``BNCHECK_FUZZ=N``) run with the tests marked slow.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES
from tests.hardening.processes import run_measured

CHILD = Path(__file__).with_name("_child.py")
REPO = Path(__file__).resolve().parents[2]
MUTANTS = int(os.environ.get("BNCHECK_FUZZ", "200"))
#: The mutants of the default run: the first of the same seeded sequence.
QUICK_MUTANTS = min(40, MUTANTS)
#: Per format: every mutant is read in one process; only a hang fails on time.
BATCH_SECONDS = 900.0
MAX_RSS_MIB = 500.0


@dataclass(frozen=True)
class Format:
    name: str
    source: Path
    """A file, or a folder (checkpoint, SavedModel) one of whose files each mutant changes."""
    command: str = "inspect"


FORMATS = [
    Format("keras", FIXTURES / "keras3/nested.keras"),
    Format("keras3-h5", FIXTURES / "keras3/nested.h5"),
    Format("keras2-h5", FIXTURES / "keras2/nested.h5"),
    Format("weights-h5", FIXTURES / "weights/nested.weights.h5"),
    Format("torch-zip", FIXTURES / "pytorch/healthy.pt"),
    Format("torch-legacy", FIXTURES / "pytorch/healthy_legacy.pt"),
    Format("torchscript", FIXTURES / "pytorch/healthy_torchscript.pt"),
    Format("safetensors", FIXTURES / "pytorch/healthy.safetensors"),
    Format("onnx", FIXTURES / "pytorch/healthy.onnx"),
    Format("tf2-checkpoint", FIXTURES / "checkpoints/keras3_object", "checkpoint"),
    Format("tf1-checkpoint", FIXTURES / "checkpoints/tf1_saver_all", "checkpoint"),
    Format("savedmodel", FIXTURES / "checkpoints/keras3_export"),
]

Mutation = Callable[[random.Random, bytearray], str]


def flip(rng: random.Random, data: bytearray) -> str:
    positions = sorted(rng.randrange(len(data)) for _ in range(rng.randint(1, 16)))
    for position in positions:
        data[position] ^= rng.randrange(1, 256)
    return f"flipped {positions}"


def overwrite(rng: random.Random, data: bytearray) -> str:
    start = rng.randrange(len(data))
    length = min(rng.randint(1, 512), len(data) - start)
    fill = rng.choice([b"\x00", b"\xff", None])
    data[start : start + length] = (
        fill * length if fill else bytes(rng.randrange(256) for _ in range(length))
    )
    return f"overwrote {length} bytes at {start} with {fill!r}"


def plant_integer(rng: random.Random, data: bytearray) -> str:
    """A huge or negative number where a size, count or offset may be stored."""
    value = rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 62, (1 << 64) - 1, 0x80000000, 1 << 40])
    size = rng.choice([4, 8])
    start = rng.randrange(max(1, len(data) - size))
    packed = struct.pack("<Q", value & ((1 << 64) - 1))[:size]
    data[start : start + size] = packed
    return f"planted {value:#x} ({size} bytes) at {start}"


def truncate(rng: random.Random, data: bytearray) -> str:
    end = rng.randrange(len(data))
    del data[end:]
    return f"truncated at {end}"


def insert(rng: random.Random, data: bytearray) -> str:
    start = rng.randrange(len(data))
    length = rng.randint(1, 4096)
    chunk = bytes(data[start : start + length]) or b"\x00"
    at = rng.randrange(len(data))
    data[at:at] = chunk * rng.randint(1, 4)
    return f"inserted {len(chunk)} bytes from {start} at {at}"


def delete(rng: random.Random, data: bytearray) -> str:
    start = rng.randrange(len(data))
    length = rng.randint(1, 4096)
    del data[start : start + length]
    return f"deleted {length} bytes at {start}"


MUTATIONS: list[Mutation] = [flip, overwrite, plant_integer, truncate, insert, delete]


@dataclass(frozen=True)
class Mutant:
    description: str
    path: Path


def make_mutants(spec: Format, folder: Path, count: int, seed: int) -> list[Mutant]:
    rng = random.Random(seed)
    mutants = []
    for index in range(count):
        target = folder / f"{index:04d}{spec.source.suffix}"
        mutation = rng.choice(MUTATIONS)
        if spec.source.is_dir():
            shutil.copytree(spec.source, target)
            member = rng.choice(sorted(p for p in target.rglob("*") if p.is_file()))
            data = bytearray(member.read_bytes())
            what = f"{member.relative_to(target)} {mutation(rng, data)}"
            member.write_bytes(bytes(data))
        else:
            data = bytearray(spec.source.read_bytes())
            what = mutation(rng, data)
            target.write_bytes(bytes(data))
        mutants.append(Mutant(f"{spec.name} #{index}: {what}", target))
    return mutants


def digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def problem(mutant: Mutant, outcome: dict[str, Any]) -> str | None:
    code, out, err = outcome["code"], outcome["out"], outcome["err"]
    if "Traceback" in out + err:
        return f"traceback: {err[-400:]!r}"
    if code in (0, 1):
        models = json.loads(out)["models"]
        return None if models[0]["error"] is None else "an error in the report with exit 0/1"
    if code == 3:
        lines = err.strip().splitlines()
        if len(lines) != 1 or not lines[0].startswith(f"bncheck: error: {mutant.path}: "):
            return f"not one error line naming the input: {err[:300]!r}"
        return None
    return f"exit code {code}: {err[-300:]!r}"


def test_mutations_change_the_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 8
    for mutation in MUTATIONS:
        changed = bytearray(data)
        mutation(random.Random(1), changed)
        assert bytes(changed) != data, mutation.__name__


@pytest.mark.parametrize(
    "count",
    [
        pytest.param(QUICK_MUTANTS, id="quick"),
        pytest.param(MUTANTS, id="all", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("spec", FORMATS, ids=[spec.name for spec in FORMATS])
def test_fuzzed_files_keep_every_promise(spec: Format, count: int, tmp_path: Path) -> None:
    folder = tmp_path / "mutants"
    folder.mkdir()
    (tmp_path / "home").mkdir()
    seed = 20261206 + FORMATS.index(spec)
    mutants = make_mutants(spec, folder, count, seed)
    listing = tmp_path / "runs.json"
    listing.write_text(
        json.dumps([[spec.command, str(m.path), "--format", "json"] for m in mutants])
    )
    before = digests(tmp_path)
    env = dict(os.environ, HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO))
    done = run_measured(
        [sys.executable, str(CHILD), "--static-batch", str(listing)], tmp_path, env, BATCH_SECONDS
    )
    outcomes = [json.loads(line) for line in done.out.splitlines()]
    if len(outcomes) < len(mutants):
        stopped = "hung" if done.code is None else f"died ({done.code})"
        pytest.fail(
            f"the process {stopped} on {mutants[len(outcomes)].description}: {done.err[-800:]}"
        )
    failures = [
        f"{mutant.description}: {found}"
        for mutant, outcome in zip(mutants, outcomes, strict=True)
        if (found := problem(mutant, outcome))
    ]
    assert not failures, f"{len(failures)} of {len(mutants)} mutants:\n" + "\n".join(failures[:30])
    assert digests(tmp_path) == before, "a file changed or appeared"
    assert done.peak_rss_mib <= MAX_RSS_MIB, f"peak memory {done.peak_rss_mib:.0f} MiB"
    # A fuzzer that only ever produced one outcome tested less than it claims.
    codes = {outcome["code"] for outcome in outcomes}
    assert 3 in codes, codes
