"""bncheck's optional parts, and the one-line answer when one is not installed.

The core reads every format without them. Running a model (``--probe``, ``--data``) needs the
extra of its format's runtime (``bncheck.formats.RUNTIMES``): TensorFlow for Keras files and
SavedModels, onnxruntime for ONNX, PyTorch for TorchScript; ``recalibrate`` needs TensorFlow,
``bncheck plot`` matplotlib.
"""

from __future__ import annotations

from importlib.util import find_spec

from bncheck.errors import UsageError

#: Extra -> (what it brings, the modules it must provide); names as in pyproject.toml.
EXTRAS = {
    "tensorflow": ("TensorFlow", ("tensorflow", "keras")),
    "onnx": ("onnxruntime", ("onnxruntime",)),
    "torch": ("PyTorch", ("torch",)),
    "plot": ("matplotlib", ("matplotlib",)),
}


def require(extra: str, purpose: str) -> None:
    """``UsageError`` naming the ``pip install`` to run when ``extra`` is not installed. Looks
    the modules up without importing them: importing TensorFlow takes seconds."""
    what, modules = EXTRAS[extra]
    if any(find_spec(module) is None for module in modules):
        raise UsageError(f'{purpose} needs {what}: pip install "bncheck[{extra}]"')
