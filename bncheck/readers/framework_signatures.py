"""How PyTorch and safetensors files are recognised, with no more than the standard library, so
that sniffing a file costs no reader's imports."""

from __future__ import annotations

import re
import struct

#: ``torch.save``'s legacy format starts with this pickle: protocol 2, the magic number.
LEGACY_MAGIC = bytes.fromhex("80028a0a6cfc9c46f9206aa85019")
#: A zip archive's main pickle: ``<name>/data.pkl`` directly under one top folder.
_DATA_PICKLE = re.compile(r"^([^/]+)/data\.pkl$")
#: The safetensors format caps its header at 100 MB.
MAX_SAFETENSORS_HEADER = 100_000_000


def data_pickle_member(names: list[str]) -> str | None:
    """The main pickle of a PyTorch zip archive, from its member names; ``None`` if there is no
    single one."""
    found = [name for name in names if _DATA_PICKLE.match(name)]
    return found[0] if len(found) == 1 else None


def is_safetensors(head: bytes, file_size: int) -> bool:
    """Whether a file's first bytes (at least 9) look like a safetensors header."""
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= min(MAX_SAFETENSORS_HEADER, file_size - 8) and head[8:9] == b"{"
