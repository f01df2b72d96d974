"""Code bncheck does not own: the user's Python files (``--custom-objects``, ``--dataset-fn``),
and the one line that tells what such code, Keras or TensorFlow raised."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from bncheck.errors import UsageError


def run_user_file(path: str, option: str) -> ModuleType:
    """Run a Python file of the user's, named by ``option`` (``--custom-objects``,
    ``--dataset-fn``): the user's own code, trusted explicitly. Any failure is one line.

    The file's folder comes first on the module search path, as ``python FILE.py`` puts it, so
    that the file imports the modules beside it. From then on this process writes no bytecode:
    Python would otherwise leave a ``__pycache__`` folder beside the file and each module it
    imports, in folders that are the user's, not the command's to write. (It runs in a
    contained run, which ends with the command.)"""
    sys.dont_write_bytecode = True
    target = Path(path)
    if not target.is_file():
        raise UsageError(f"{option} {path}: no such file")
    folder = str(target.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:12]
    module_name = f"bncheck_{option.strip('-').replace('-', '_')}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, target)
    if spec is None or spec.loader is None:
        raise UsageError(f"{option} {path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's file may fail in any way; report it on one line
        place = raised_in(exc, path)
        raise UsageError(f"{option} {path} failed ({describe_error(exc)}{place})") from None
    return module


def raised_in(exc: BaseException, path: str) -> str:
    """Where in the user's files (``path`` and the modules beside it) ``exc`` was last on its
    way: ``"; FILE.py line N"``, or nothing when it never passed through them."""
    folder = Path(path).resolve().parent
    found = ""
    frame = exc.__traceback__
    while frame is not None:
        filename = Path(frame.tb_frame.f_code.co_filename)
        if filename.parent == folder or filename.resolve().parent == folder:
            found = f"; {filename.name} line {frame.tb_lineno}"
        frame = frame.tb_next
    return found


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, shortened: Keras errors quote whole configurations."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
