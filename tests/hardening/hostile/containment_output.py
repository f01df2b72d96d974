"""Files that crash or hang libhdf5, and names that try to hijack the output.

- A one-byte change to a Keras 2 ``.h5`` fixture makes libhdf5 (h5py 3.14) dereference a bad
  pointer inside an attribute read (SIGSEGV); another makes it loop forever. Reading happens in
  a worker process: the command names the file in one line and exits 3.
- Layer names and file names that hold newlines, terminal escapes, GitHub Actions commands
  (``::error::``, ``::add-mask::``, ``##[add-mask]``), Markdown images and links, HTML and the
  Unicode line separator: every output shows them escaped.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from tests.conftest import FIXTURES
from tests.hardening.hostile import HostileCase

KERAS2_H5 = FIXTURES / "keras2/nested.h5"

#: Offset and new value of one byte of ``KERAS2_H5``: inside an attribute's message, where
#: libhdf5 follows the broken value into a segmentation fault.
SEGFAULT_BYTE = (1009, 228)
#: One byte of ``KERAS2_H5`` after which libhdf5 never returns from opening the model.
HANG_BYTE = (2057, 196)

#: Layer names that attack the output, each with what it tries.
HOSTILE_NAMES = [
    "\n::error::forged annotation",
    "\x1b[2J\x1b[Hcleared screen",
    "::add-mask::secret",
    "##[add-mask]legacy",
    "![x](http://e/x.png)",
    "[click](http://e/)",
    "<img src=x onerror=alert(1)>",
    "line\u2028separator",
    "\u202eoverride",
    "tab\there\rcarriage",
    "visit https://e.example/x or www.e.example",
    "left\u200eto\u200fright\ufeffzero\u200bwidth",
]


def one_byte_changed(source: Path, change: tuple[int, int], target: Path) -> Path:
    data = bytearray(source.read_bytes())
    offset, value = change
    data[offset] = value
    target.write_bytes(bytes(data))
    return target


def segfault_h5(folder: Path) -> Path:
    return one_byte_changed(KERAS2_H5, SEGFAULT_BYTE, folder / "segfault.h5")


def hang_h5(folder: Path) -> Path:
    return one_byte_changed(KERAS2_H5, HANG_BYTE, folder / "hang.h5")


def safetensors_file(path: Path, header: Mapping[str, object], data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def hostile_names_safetensors(path: Path) -> Path:
    """One BatchNorm layer per hostile name (``NAME.bn``), each with a non-finite variance so
    that a finding names it too."""
    header: dict[str, object] = {}
    data = b""
    rng = np.random.default_rng(0)
    for name in HOSTILE_NAMES:
        arrays = {
            "weight": rng.uniform(0.5, 1.5, 4),
            "bias": rng.normal(0, 0.2, 4),
            "running_mean": rng.normal(0, 1, 4),
            "running_var": np.array([np.nan, 1.0, 1.0, 1.0]),
        }
        for kind, values in arrays.items():
            raw = values.astype("<f4").tobytes()
            header[f"{name}.bn.{kind}"] = {
                "dtype": "F32",
                "shape": [4],
                "data_offsets": [len(data), len(data) + len(raw)],
            }
            data += raw
    return safetensors_file(path, header, data)


def unreadable_safetensors(path: Path) -> Path:
    """A reason for refusing the file that quotes its text: a dtype holding a command."""
    header = {
        "x\n::error::y.running_mean": {
            "dtype": "\n::add-mask::Z\u2028",
            "shape": [4],
            "data_offsets": [0, 16],
        }
    }
    return safetensors_file(path, header, b"\0" * 16)


def _names(folder: Path, *options: str) -> Sequence[str]:
    return ["inspect", str(hostile_names_safetensors(folder / "names.safetensors")), *options]


def _file_names(folder: Path) -> Sequence[str]:
    models = folder / "models"
    models.mkdir()
    hostile_names_safetensors(models / "\n::error::file.safetensors")
    hostile_names_safetensors(models / "\x1b[31m::add-mask::x.safetensors")
    return ["inspect", str(models)]


def _segfault_among_healthy(folder: Path, *options: str) -> Sequence[str]:
    healthy = folder / "healthy.h5"
    healthy.write_bytes(KERAS2_H5.read_bytes())
    return ["inspect", str(healthy), str(segfault_h5(folder)), str(healthy), *options]


CASES: list[HostileCase] = [
    HostileCase("h5-libhdf5-segfault", lambda d: _segfault_among_healthy(d), frozenset({3})),
    HostileCase(
        "h5-libhdf5-segfault-jobs-2",
        lambda d: _segfault_among_healthy(d, "--jobs", "2"),
        frozenset({3}),
    ),
    # The hang spins a core until the read limit stops it: a short one costs the suite less.
    HostileCase(
        "h5-libhdf5-hang",
        lambda d: ["inspect", str(hang_h5(d)), "--read-timeout", "5"],
        frozenset({3}),
    ),
    HostileCase("names-hijack-table", lambda d: _names(d), frozenset({1})),
    HostileCase(
        "names-hijack-markdown", lambda d: _names(d, "--format", "markdown"), frozenset({1})
    ),
    HostileCase("names-hijack-github", lambda d: _names(d, "--format", "github"), frozenset({1})),
    HostileCase("file-names-hijack-table", _file_names, frozenset({1})),
    HostileCase(
        "error-reason-hijack-stderr",
        lambda d: ["inspect", str(unreadable_safetensors(d / "bad.safetensors"))],
        frozenset({3}),
    ),
]
