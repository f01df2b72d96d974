"""Models that run code when Keras rebuilds or runs them, each creating a canary file if it does.

- Lambda layers saved as marshalled bytecode, in ``.keras``, Keras 3 ``.h5`` and tf-keras ``.h5``
  (Keras's legacy HDF5 loader once ignored ``safe_mode`` for them: CVE-2025-9905).
- Configurations naming functions by module: a Dense activation from a module outside Keras (the
  CVE-2025-1550 shape) and a Lambda whose function is a Keras utility that creates a directory,
  given its path through the graph's call arguments (the CVE-2025-9906 shape). Keras 3.15 refuses
  both even with ``safe_mode=False``; older Keras versions run them, and bncheck must refuse them
  before Keras sees them.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

CANARY_MODULE = "tests.hardening.canary_module"


def lambda_bytecode_canaries(directory: Path, canary: Path) -> list[Path]:
    """``.keras``, Keras 3 ``.h5`` and tf-keras ``.h5`` models whose Lambda layer creates
    ``canary`` when it runs."""
    import keras
    import tf_keras

    # A Python lambda, which Keras saves as marshalled bytecode; the path is a constant of its
    # code because Keras cannot reload a lambda's default arguments.
    touch = eval(f"lambda t: (open({str(canary)!r}, 'w').close(), t)[1]")
    paths = []
    for api, suffixes in ((keras, (".keras", ".h5")), (tf_keras, (".h5",))):
        inputs = api.Input((4,), name="x")
        hidden = api.layers.BatchNormalization(name="bn")(api.layers.Dense(4)(inputs))
        model = api.Model(inputs, api.layers.Lambda(touch, name="canary")(hidden), name="m")
        for suffix in suffixes:
            path = directory / f"bytecode_{api.__name__}{suffix}"
            model.save(path)
            paths.append(path)
    canary.unlink()
    return paths


def function_reference_canaries(directory: Path, canary: Path) -> list[Path]:
    """``.keras`` and Keras 3 ``.h5`` models whose configuration names a function that creates
    ``canary`` (a file, or a directory) when Keras rebuilds or runs the model."""
    import keras

    inputs = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(4, activation="relu", name="dense")(inputs)
    hidden = keras.layers.Lambda(lambda t: t, name="helper")(hidden)
    model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(hidden), name="m")

    def foreign_activation(config: dict[str, Any]) -> None:
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Dense":
                layer["config"]["activation"] = _function(CANARY_MODULE, "touch")

    def keras_utility(config: dict[str, Any]) -> None:
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "Lambda":
                layer["config"]["function"] = _function("keras.src.utils.file_utils", "makedirs")
                layer["config"]["arguments"] = {}
                layer["inbound_nodes"] = [{"args": [], "kwargs": {"inputs": str(canary)}}]

    paths = []
    for name, edit in (
        ("foreign_activation", foreign_activation),
        ("keras_utility", keras_utility),
    ):
        archive = directory / f"{name}.keras"
        model.save(archive)
        _edit_archive_config(archive, edit)
        legacy = directory / f"{name}.h5"
        model.save(legacy)
        _edit_h5_config(legacy, edit)
        paths += [archive, legacy]
    return paths


def _function(module: str, name: str) -> dict[str, Any]:
    return {
        "module": module,
        "class_name": "function",
        "config": name,
        "registered_name": "function",
    }


def _edit_archive_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _edit_h5_config(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = json.dumps(config)


def pickle_canaries(directory: Path, canary: Path) -> list[Path]:
    """PyTorch files whose pickle creates ``canary`` when an unpickler rebuilds it: a call of
    ``os.system`` or ``exec`` among the tensors, one run and popped before the data (a scanner
    that stops at the first error misses it), an object whose ``__setstate__`` runs, in every
    container bncheck reads (zip, legacy, TorchScript-shaped, a ``.bin`` named by content only),
    and the shapes of known ``torch.load(weights_only=True)`` bypasses: a TorchScript archive,
    which PyTorch 2.5 handed to ``torch.jit.load`` (CVE-2025-32434), and an allowed rebuilder
    wrapping a foreign function."""
    from tests.torch_files import (
        Instance,
        Name,
        bn_arrays,
        dumps,
        state_dict,
        write_legacy,
        write_zip,
    )

    touch = f"touch {canary}"
    system = _Reduce(Name("posix", "system"), (touch,))
    executes = _Reduce(Name("builtins", "exec"), (f"open({str(canary)!r}, 'w').close()",))
    wrapped = _Reduce(
        Name("torch._tensor", "_rebuild_from_type_v2"),
        (Name("posix", "system"), Name("torch", "Tensor"), (touch,), {}),
    )
    setstate = Instance(Name("tests.hardening.canary_module", "Touches"), {"state": 1})
    layers = bn_arrays("layer1.0.bn1")
    popped = b"\x80\x02cposix\nsystem\nX" + len(touch).to_bytes(4, "little") + touch.encode()
    popped += b"\x85R0" + dumps(state_dict(layers))[2:]
    paths = [
        write_zip(directory / "system.pt", state_dict(layers, payload=system)),
        write_zip(directory / "exec.pth", {"state_dict": state_dict(layers), "hook": executes}),
        write_zip(directory / "popped.pt", state_dict(layers), data_pkl=popped),
        write_zip(directory / "setstate.pt", state_dict(layers, extra=setstate)),
        write_zip(directory / "wrapped.pt", state_dict(layers, weight=wrapped)),
        write_legacy(directory / "legacy.pt", state_dict(layers, payload=system)),
        write_zip(directory / "content.bin", state_dict(layers, payload=system)),
    ]
    torchscript = write_zip(directory / "torchscript.pt", state_dict(layers, payload=system))
    with zipfile.ZipFile(torchscript, "a") as archive:
        archive.writestr("archive/code/__torch__/model.py", "def forward(self, x): return x\n")
        archive.writestr("archive/constants.pkl", dumps(()))
    paths.append(torchscript)
    return paths


class _Reduce:
    """Pickles as ``target(*arguments)``, the way a hostile ``__reduce__`` does."""

    def __init__(self, target: object, arguments: tuple[object, ...]) -> None:
        self.target, self.arguments = target, arguments

    def __reduce__(self) -> tuple[object, ...]:
        return self.target, self.arguments
