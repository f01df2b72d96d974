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


def find_models(folder: str) -> list[str]:
    """Every model under ``folder``, recursively, in sorted order.

    A file is a model when a format finds it by its content (``Format.found_in_folders``) or its
    name ends in a format's suffix, except a file that another stands for (a shard its index
    names); a folder a format recognises (a SavedModel, a checkpoint) is one model.
    Hidden files and directories (``.git``) are skipped, and each real directory is searched once.
    """
    found: list[str] = []
    seen: set[str] = set()

    def search(directory: str) -> None:
        real = os.path.realpath(directory)
        if real in seen:
            return
        seen.add(real)
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_model_directory(entry.path):
                    found.append(entry.path)
                else:
                    search(entry.path)
            elif entry.is_file() and _is_model_file(entry.path):
                found.append(entry.path)

    search(folder)
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
