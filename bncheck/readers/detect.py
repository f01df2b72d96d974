"""Recognise a model by its content, not its extension, alone or in a folder of files."""

from __future__ import annotations

import os
from pathlib import Path

from bncheck import formats
from bncheck.errors import ModelReadError


def sniff(path: str) -> formats.Format:
    """The format of the file or folder at ``path``, by content more than by name: the first
    of ``formats.FORMATS`` that recognises it; ``ModelReadError`` when none does."""
    candidate = formats.Candidate(path)
    for entry in formats.FORMATS.values():
        if entry.recognise(candidate):
            return entry
    if candidate.is_dir:
        raise ModelReadError(
            "directory is neither a SavedModel (no saved_model.pb) nor a checkpoint "
            "(no checkpoint or .index file)"
        )
    if not candidate.path.exists():
        raise ModelReadError("no such file or directory")
    if not candidate.is_file:
        raise ModelReadError("not a regular file")
    if not candidate.head:
        raise ModelReadError("the file is empty")
    if candidate.zip_refusal is not None:
        raise ModelReadError(candidate.zip_refusal)
    raise ModelReadError(f"not a model file bncheck can read (expected {_expected()})")


def _expected() -> str:
    called = [entry.called for entry in formats.FORMATS.values()]
    return ", ".join(called[:-1]) + f" or {called[-1]}" if len(called) > 1 else called[0]


def is_model_directory(path: str) -> bool:
    """A SavedModel or checkpoint directory: one model, not a folder to search."""
    try:
        return os.path.isdir(path) and sniff(path) is not None
    except ModelReadError:
        return False


#: The deepest a searched folder may nest: models sit a few levels down, and a scan that skipped
#: deeper levels could miss one that a check must see.
MAX_FOLDER_DEPTH = 64
#: The most files and folders a search looks at.
MAX_FOLDER_ENTRIES = 100_000


def find_models(folder: str) -> list[str]:
    """Every model under ``folder``, recursively, in sorted order.

    A file is a model when a format finds it by its content (``Format.found_in_folders``) or its
    name ends in a format's suffix, except a file that another stands for (a shard its index
    names); a folder a format recognises (a SavedModel, a checkpoint) is one model.
    Hidden files and directories (``.git``) are skipped, and each real directory is searched once.
    A folder nested more than ``MAX_FOLDER_DEPTH`` levels deep, or holding more than
    ``MAX_FOLDER_ENTRIES`` entries, is refused (``ModelReadError``) rather than searched in part.
    The walk keeps its own stack, so its cost is linear in the entries, whatever the depth.
    """
    found: list[str] = []
    seen: set[str] = set()
    visited = 0
    # Entries still to look at, the next one last: (path, is a directory, depth).
    pending: list[tuple[str, bool, int]] = [(folder, True, 0)]
    while pending:
        path, is_dir, depth = pending.pop()
        if not is_dir:
            if _is_model_file(path):
                found.append(path)
            continue
        if depth and is_model_directory(path):
            found.append(path)
            continue
        if depth > MAX_FOLDER_DEPTH:
            raise ModelReadError(
                f"folders nest more than {MAX_FOLDER_DEPTH} levels deep; name the models or a "
                "shallower folder"
            )
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        try:
            with os.scandir(path) as listing:
                entries = sorted(
                    (entry for entry in listing if not entry.name.startswith(".")),
                    key=lambda entry: entry.name,
                )
        except OSError:
            continue
        visited += len(entries)
        if visited > MAX_FOLDER_ENTRIES:
            raise ModelReadError(
                f"folder holds more than {MAX_FOLDER_ENTRIES} files and folders; name the "
                "models or a smaller folder"
            )
        children = []
        for entry in entries:
            try:
                if entry.is_dir():
                    children.append((entry.path, True, depth + 1))
                elif entry.is_file():
                    children.append((entry.path, False, depth + 1))
            except OSError:
                continue
        pending.extend(reversed(children))
    return found


def _is_model_file(path: str) -> bool:
    target = Path(path)
    entries = formats.FORMATS.values()
    if any(entry.stands_for is not None and entry.stands_for(target) for entry in entries):
        return False
    if path.lower().endswith(formats.model_suffixes()):
        return True
    candidate = formats.Candidate(path)
    try:
        return any(
            entry.found_in_folders is not None and entry.found_in_folders(candidate)
            for entry in entries
        )
    except OSError:  # unreadable: then it is no model
        return False
