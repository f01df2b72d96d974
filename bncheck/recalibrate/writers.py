"""Writing new BatchNorm statistics into models of every format that can be written by identity,
without the framework that made them.

``write_statistics(MODEL, OUT, statistics)`` recognises MODEL's format and hands it to its writer.
Each writer overwrites only the bytes that hold the statistics (and the checksums that cover
them), checks the result against MODEL and reads it back with bncheck's own reader before it
replaces OUT, and fails with one line (``WriteError``, exit code 3); see ``splice``.

``statistics`` maps each layer's path, exactly as bncheck's reader names it
(``bncheck.readers.read_model(MODEL).layers[i].path``), to ``(mean, variance)`` as the framework
stores them (PyTorch's and ONNX's ``running_var`` is the unbiased variance); they are written as
given, cast to each array's stored type.
"""

from __future__ import annotations

from collections.abc import Callable

from bncheck import formats
from bncheck.errors import ModelReadError
from bncheck.readers import detect
from bncheck.recalibrate.splice import Statistics
from bncheck.recalibrate.write import WriteError

#: Each format's writer, ``"module:function"`` taking ``(source, target, statistics)``, by the
#: format's name in ``formats.FORMATS``.
WRITERS = {
    "onnx": "bncheck.recalibrate.write_onnx:write",
    "pytorch": "bncheck.recalibrate.write_torch:write",
    "torchscript": "bncheck.recalibrate.write_torch:write",
    "safetensors": "bncheck.recalibrate.write_safetensors:write",
    "savedmodel": "bncheck.recalibrate.write_bundle:write_savedmodel",
}


def write_statistics(model_path: str, out_path: str, statistics: Statistics) -> None:
    """Write ``out_path`` as ``model_path`` with ``statistics`` in place of the stored ones."""
    try:
        found = detect.sniff(model_path)
    except ModelReadError as exc:
        raise WriteError(f"{model_path}: {exc}") from None
    if found.name not in WRITERS:
        raise WriteError(f"{model_path}: bncheck does not write {found.called} by its bytes")
    writer: Callable[[str, str, Statistics], None] = formats.load(WRITERS[found.name])
    writer(model_path, out_path, statistics)
