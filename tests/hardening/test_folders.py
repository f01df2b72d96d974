"""Detection and folder scans against hostile archives and folders: they run in the command's
own process, so each must be bounded there. Each case is refused in one line (exit 3) within a
hang limit and a memory bound measured in a child process; healthy folders nested within the
limit are still searched whole."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from bncheck import formats
from bncheck.errors import ModelReadError
from bncheck.readers import detect
from tests.hardening.hostile import HostileCase
from tests.hardening.hostile import folders as hostile
from tests.hardening.processes import run_child


@pytest.mark.parametrize("case", hostile.CASES, ids=lambda case: case.name)
def test_hostile_folder_or_archive_is_refused_within_bounds(
    case: HostileCase, tmp_path: Path
) -> None:
    args = case.build(tmp_path)
    outcome = run_child(args)
    code, err = outcome["code"], outcome["err"]
    assert "Traceback" not in outcome["out"] + err and "internal error" not in err, err[-500:]
    assert code in case.codes, (code, err[-500:])
    assert outcome["max_rss_mib"] < case.max_rss_mib, outcome["max_rss_mib"]
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("bncheck: error: ") for line in lines), err
    assert len(lines) == 1, err


def test_an_archive_declaring_too_many_members_is_named_in_one_line(tmp_path: Path) -> None:
    path = hostile.zip_directory_flood(tmp_path / "weights")
    with pytest.raises(ModelReadError, match=r"declares 65535 members in a central directory of"):
        detect.sniff(str(path))
    with pytest.raises(ModelReadError, match=r"declares 10000000 members"):
        formats.open_zip(hostile.zip64_declared_flood(tmp_path / "z64.keras"))
    # Met while searching a folder, it is no model (as the reader of a named file would say).
    assert detect.find_models(str(tmp_path)) == [str(tmp_path / "z64.keras")]


def test_real_archives_pass_the_directory_check(tmp_path: Path) -> None:
    path = tmp_path / "many.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for index in range(5_000):
            archive.writestr(f"archive/data/{index}", b"")
        archive.writestr("config.json", "{}")
    with formats.open_zip(path) as archive:
        assert len(archive.namelist()) == 5_001
    assert formats.Candidate(str(path)).zip_names is not None


def _nested(root: Path, levels: int) -> Path:
    deepest = root.joinpath(*["d"] * levels)
    deepest.mkdir(parents=True)
    return deepest


def test_a_folder_nested_to_the_limit_is_searched_whole(tmp_path: Path) -> None:
    deepest = _nested(tmp_path / "root", detect.MAX_FOLDER_DEPTH - 1)
    (deepest / "model.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "root" / "a.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    (tmp_path / "root" / "z.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    found = detect.find_models(str(tmp_path / "root"))
    root = tmp_path / "root"
    assert found == [str(root / "a.h5"), str(deepest / "model.h5"), str(root / "z.h5")]


def test_a_folder_nested_deeper_than_the_limit_is_refused(tmp_path: Path) -> None:
    _nested(tmp_path / "root", detect.MAX_FOLDER_DEPTH + 1)
    with pytest.raises(ModelReadError, match=r"nest more than 64 levels deep"):
        detect.find_models(str(tmp_path / "root"))


def test_a_folder_with_too_many_entries_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "MAX_FOLDER_ENTRIES", 20)
    for index in range(21):
        (tmp_path / f"f{index}.txt").write_bytes(b"x")
    with pytest.raises(ModelReadError, match=r"more than 20 files and folders"):
        detect.find_models(str(tmp_path))


def test_symlink_loops_are_searched_once(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    (tmp_path / "sub" / "m.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    assert detect.find_models(str(tmp_path)) == [str(tmp_path / "sub" / "m.h5")]
