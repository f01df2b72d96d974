"""Hostile folders and archives for the folder scan and detection, which run in the command's
own process, before any worker: a suffix-less zip archive that is only a central directory of
1.5 million members (zipfile would list it for 10 s and 600 MB while recognising it), the same
declared through a zip64 end record, and a folder nested 300 levels deep (the scan recursed
once per level, and broke at about 1,000). Each is refused in one line (exit 3), within the
corpus's bounds.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from tests.hardening.hostile import HostileCase

#: Members of the central-directory flood: 70 MB on disk, written in a fraction of a second.
FLOOD_MEMBERS = 1_500_000
#: Levels of the deep folder: far past the scan's cap of 64, and shallow enough for the tools that
#: clean temporary folders up (pytest's recursive removal breaks at about 1,000).
DEEP_LEVELS = 300


def zip_directory_flood(path: Path, members: int = FLOOD_MEMBERS) -> Path:
    """A zip archive of one local header and a central directory of ``members`` one-byte-named
    entries (its end record says 65,535, as zipfile ignores the count and reads the bytes)."""
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    entry = struct.pack(
        "<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0
    )  # fmt: skip
    directory = (entry + b"a") * members
    end = struct.pack(
        "<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, len(directory), len(local), 0
    )  # fmt: skip
    path.write_bytes(local + directory + end)
    return path


def zip64_declared_flood(path: Path) -> Path:
    """A small archive whose zip64 end record declares 10 million members in 1 GB of directory."""
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    record = struct.pack(
        "<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, 10_000_000, 10_000_000, 1 << 30, len(local)
    )  # fmt: skip
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, len(local), 1)
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    path.write_bytes(local + record + locator + end)
    return path


def deep_folder(root: Path, levels: int = DEEP_LEVELS) -> Path:
    """``root/a/a/.../a``, ``levels`` deep (built relative to each level, as paths this long
    strain the system's limits)."""
    root.mkdir()
    handle = os.open(root, os.O_RDONLY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=handle)
            deeper = os.open("a", os.O_RDONLY, dir_fd=handle)
            os.close(handle)
            handle = deeper
    finally:
        os.close(handle)
    return root


def folder_with_directory_flood(folder: Path) -> list[str]:
    (folder / "models").mkdir()
    zip_directory_flood(folder / "models" / "weights")
    return ["inspect", str(folder / "models")]


def folder_with_pt_directory_flood(folder: Path) -> list[str]:
    (folder / "models").mkdir()
    zip_directory_flood(folder / "models" / "model.pt")
    return ["inspect", str(folder / "models")]


def named_directory_flood(folder: Path) -> list[str]:
    return ["inspect", str(zip_directory_flood(folder / "weights"))]


def named_zip64_flood(folder: Path) -> list[str]:
    return ["inspect", str(zip64_declared_flood(folder / "model.keras"))]


def deeply_nested_folder(folder: Path) -> list[str]:
    return ["inspect", str(deep_folder(folder / "deep"))]


CASES: list[HostileCase] = [
    HostileCase("folder-zip-directory-flood", folder_with_directory_flood, codes=frozenset({3})),
    HostileCase("folder-pt-directory-flood", folder_with_pt_directory_flood, codes=frozenset({3})),
    HostileCase("zip-directory-flood", named_directory_flood, codes=frozenset({3})),
    HostileCase("zip64-declared-directory-flood", named_zip64_flood, codes=frozenset({3})),
    HostileCase("folder-nested-300-deep", deeply_nested_folder, codes=frozenset({3})),
]
