"""HDF5 files and ``.keras`` archives cannot make bncheck follow a link, write anywhere but OUT,
or spend more than modest memory and time; recalibrate writes exactly what it read."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from bncheck.readers import read_model
from bncheck.recalibrate import write
from bncheck.recalibrate.write import NewStatistics, WriteError, write_model
from tests.h5_tools import datasets
from tests.hardening.hostile import HostileCase
from tests.hardening.hostile.hdf5_keras import CASES, KERAS2_H5, KERAS3_ARCHIVE

CHILD = Path(__file__).with_name("_child.py")
REPO = Path(__file__).resolve().parents[2]
#: Only a hang fails: how fast files are refused is for benchmarks, not a loaded CI machine.
HANG_SECONDS = 60.0


def digests(folder: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.is_file()
    }


def run_cases(cases: list[HostileCase], root: Path) -> dict[str, dict[str, Any]]:
    """Build each case in a folder of its own and run them all in one child process (under the
    memory cap where no framework is needed: TensorFlow reserves more address space than it
    allows): each case's outcome, with its folder's files before and after. A crash or a hang
    of the child names the case it was running."""
    static = all(case.needs == "core" for case in cases)
    folders = [root / case.name for case in cases]
    argvs, befores = [], []
    for case, folder in zip(cases, folders, strict=True):
        folder.mkdir(parents=True)
        argvs.append([str(arg) for arg in case.build(folder)])
        befores.append(digests(folder))
    listing = root / "cases.json"
    listing.write_text(json.dumps(argvs))
    command = [sys.executable, str(CHILD), "--static-batch" if static else "--batch", str(listing)]
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=HANG_SECONDS * len(cases),
            cwd=REPO,
            check=False,
        )
        lines = done.stdout.splitlines()
    except subprocess.TimeoutExpired as stopped:
        out = stopped.stdout or b""
        lines = (out.decode() if isinstance(out, bytes) else out).splitlines()
        done = None
    outcomes: dict[str, dict[str, Any]] = {}
    for case, folder, before, line in zip(cases, folders, befores, lines, strict=False):
        outcome: dict[str, Any] = json.loads(line)
        assert outcome["seconds"] < HANG_SECONDS, f"{case.name} hung"
        outcome["before"], outcome["after"] = before, digests(folder)
        outcomes[case.name] = outcome
    if len(outcomes) < len(cases):
        why = "hung" if done is None else f"died ({done.returncode}): {done.stderr[-2000:]}"
        pytest.fail(f"the child {why} on {cases[len(outcomes)].name}")
    return outcomes


def refused_in_one_line(outcome: dict[str, Any], codes: frozenset[int]) -> str:
    assert outcome["code"] in codes, outcome
    if outcome["code"] != 3:
        return ""
    [line] = outcome["err"].strip().splitlines()
    assert line.startswith("bncheck: error: ")
    return str(line)


CORE = [case for case in CASES if case.needs == "core"]
TENSORFLOW = [case for case in CASES if case.needs == "tensorflow"]


@pytest.fixture(scope="module")
def core_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_cases(CORE, tmp_path_factory.mktemp("core"))


@pytest.fixture(scope="module")
def tensorflow_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return run_cases(TENSORFLOW, tmp_path_factory.mktemp("tensorflow"))


@pytest.mark.parametrize("case", CORE, ids=[case.name for case in CORE])
def test_hostile_files_are_refused_in_one_line_within_memory(
    case: HostileCase, core_outcomes: dict[str, dict[str, Any]]
) -> None:
    outcome = core_outcomes[case.name]
    refused_in_one_line(outcome, case.codes)
    assert "Traceback" not in outcome["err"]
    assert outcome["after"] == outcome["before"]
    assert outcome["max_rss_mib"] < case.max_rss_mib


EXPECTED = {
    "h5-soft-link-on-read-path": "bn/moving_variance:0 is a soft link (to /elsewhere)",
    "h5-external-link-on-read-path": "bn/moving_variance:0 links to another file",
    "h5-soft-link-chain": "is a soft link (to /g1)",
    "h5-hard-link-dag": "a group reached by a second name (a hard link)",
    "h5-hard-link-cycle": "a group reached by a second name (a hard link)",
    "h5-fill-value-shared-by-layers": "declares 67108864 bytes of values but the file stores 0",
    "h5-dataset-shared-by-layers": "is the same dataset as",
    "h5-compressed-bomb": "compressed more than 100:1",
    "shards-not-numeric": "has non-numeric type object",
    "keras-config-bomb": "config.json is larger than 32 MiB",
    "keras-config-too-deep": "config.json is nested deeper than 200 levels",
    "keras-padded-weights": "model.weights.h5 inflates past 67108864 bytes",
    "keras-duplicate-weights-member": "two members named 'model.weights.h5'",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_refusal_says_why(name: str, core_outcomes: dict[str, dict[str, Any]]) -> None:
    line = refused_in_one_line(core_outcomes[name], frozenset({3}))
    assert EXPECTED[name] in line


@pytest.mark.parametrize("case", TENSORFLOW, ids=[case.name for case in TENSORFLOW])
def test_recalibrate_writes_nothing_for_hostile_files(
    case: HostileCase, tensorflow_outcomes: dict[str, dict[str, Any]]
) -> None:
    outcome = tensorflow_outcomes[case.name]
    line = refused_in_one_line(outcome, case.codes)
    assert "Traceback" not in outcome["err"]
    # The input, the file an external link named and the data keep their bytes; no OUT.
    assert outcome["after"] == outcome["before"]
    expected = {
        "h5-external-link-into-input": "'/evil/moving_mean:0', which is not a plain path",
        # Keras's loader reads every member before the writer would: one line either way.
        "keras-extra-member-bad-crc": "Bad CRC-32 for file 'extra.bin'",
        "keras-extra-member-deflate64": "That compression method is not supported",
        # Refused before Keras would extract 96 MiB or the writer would copy it.
        "keras-asset-bomb": "member 'assets/blob.bin' of the .keras archive would inflate to",
    }[case.name]
    assert expected in line


def test_inspect_reads_an_archive_whose_extra_member_is_unreadable(tmp_path: Path) -> None:
    """inspect reads config.json and the weights only: the rest of the archive is no concern."""
    [case] = [case for case in CASES if case.name == "keras-extra-member-deflate64"]
    folder = tmp_path / "case"
    folder.mkdir()
    case.build(folder)
    assert len(read_model(str(folder / "model.keras")).layers) == 3


# --- the writer ---------------------------------------------------------------------------


def new_statistics(path: Path) -> dict[str, NewStatistics]:
    return {
        layer.path: NewStatistics(
            layer.moving_mean + 1.0,
            layer.moving_variance * 2.0,
            layer.locations["moving_mean"],
            layer.locations["moving_variance"],
        )
        for layer in read_model(str(path)).layers
    }


def test_out_does_not_inherit_setuid_or_writing_by_others(tmp_path: Path) -> None:
    model, out = tmp_path / "model.h5", tmp_path / "out.h5"
    model.write_bytes(KERAS2_H5.read_bytes())
    os.chmod(model, 0o6777)
    write_model(str(model), str(out), "h5", new_statistics(model))
    assert stat.S_IMODE(out.stat().st_mode) == 0o755


def test_the_writer_changes_the_statistics_it_was_given_and_nothing_else(tmp_path: Path) -> None:
    model, out = tmp_path / "model.h5", tmp_path / "out.h5"
    model.write_bytes(KERAS2_H5.read_bytes())
    updates = new_statistics(model)
    write_model(str(model), str(out), "h5", updates)
    assert model.read_bytes() == KERAS2_H5.read_bytes()
    old, new = datasets(model), datasets(out)
    changed = {name for name in old if old[name] != new[name]}
    written = {s.mean_location for s in updates.values()} | {
        s.variance_location for s in updates.values()
    }
    assert changed == written
    for statistics in updates.values():
        with h5py.File(out, "r") as h5:
            np.testing.assert_array_equal(
                h5[statistics.mean_location][()], statistics.moving_mean.astype("float32")
            )


def test_a_write_that_touches_anything_else_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = tmp_path / "model.h5", tmp_path / "out.h5"
    model.write_bytes(KERAS2_H5.read_bytes())
    real_store = write._store

    def store_and_more(dataset: h5py.Dataset, values: np.ndarray) -> np.ndarray:
        dataset.file["model_weights/conv1/conv1/kernel:0"][...] = 7.0
        return real_store(dataset, values)

    monkeypatch.setattr(write, "_store", store_and_more)
    with pytest.raises(WriteError, match="differs from the model outside the statistics"):
        write_model(str(model), str(out), "h5", new_statistics(model))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.h5"]


def test_nothing_is_written_when_the_model_changes_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, out = tmp_path / "model.keras", tmp_path / "out.keras"
    model.write_bytes(KERAS3_ARCHIVE.read_bytes())
    real_overwrite = write._overwrite

    def overwrite_and_touch_the_model(path: str, updates: Any) -> Any:
        with open(model, "ab") as handle:
            handle.write(b"!")
        return real_overwrite(path, updates)

    monkeypatch.setattr(write, "_overwrite", overwrite_and_touch_the_model)
    with pytest.raises(WriteError, match="changed while .* was written; nothing written"):
        write_model(str(model), str(out), "keras", new_statistics(model))
    assert not out.exists()


@pytest.mark.parametrize(
    "location", ["/model_weights/bn1/bn1/moving_mean:0", "model_weights/bn1//bn1/moving_mean:0"]
)
def test_the_writer_resolves_names_as_strictly_as_the_reader(location: str, tmp_path: Path) -> None:
    model, out = tmp_path / "model.h5", tmp_path / "out.h5"
    model.write_bytes(KERAS2_H5.read_bytes())
    [first, *_] = new_statistics(model).values()
    bad = NewStatistics(first.moving_mean, first.moving_variance, location, location)
    with pytest.raises(WriteError, match="not a plain path"):
        write_model(str(model), str(out), "h5", {"bn1": bad})
    assert not out.exists()


def test_the_writer_refuses_to_write_one_dataset_twice(tmp_path: Path) -> None:
    model, out = tmp_path / "model.h5", tmp_path / "out.h5"
    model.write_bytes(KERAS2_H5.read_bytes())
    [first, *_] = new_statistics(model).values()
    same = NewStatistics(
        first.moving_mean, first.moving_variance, first.mean_location, first.mean_location
    )
    with pytest.raises(WriteError, match="are the same dataset"):
        write_model(str(model), str(out), "h5", {"bn1": same})


def test_an_archive_member_that_cannot_be_read_is_one_write_error(tmp_path: Path) -> None:
    [case] = [case for case in CASES if case.name == "keras-extra-member-bad-crc"]
    folder = tmp_path / "case"
    folder.mkdir()
    case.build(folder)
    model = folder / "model.keras"
    with pytest.raises(WriteError, match=r"cannot write .*: corrupt zip archive \(Bad CRC-32"):
        write_model(str(model), str(folder / "OUT.keras"), "keras", new_statistics(model))
    assert not (folder / "OUT.keras").exists()
    with zipfile.ZipFile(model) as archive:
        assert "extra.bin" in archive.namelist()
