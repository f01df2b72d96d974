"""Find code in a model's configuration before anything loads it. TensorFlow-free.

Loading a Keras model rebuilds every object its configuration names, and calling it runs them.
Most of that is Keras's own code; some is not:

- a ``Lambda`` layer runs whatever function it holds: marshalled Python bytecode (``__lambda__``
  in Keras 3, a ``[code, defaults, closure]`` list in Keras 2 ``.h5`` files) or a function named
  by module and name, which Keras resolves when loading;
- a function reference (``{"class_name": "function", "module": ...}``) outside Keras's modelling
  modules is the CVE-2025-1550 pattern: a configuration naming ``os.system``, or a Keras
  utility such as ``keras.utils.get_file``, to be imported and called while loading;
- a class Keras does not ship (``"module": null`` with a ``registered_name``, or a module outside
  the Keras packages) runs the code of whoever defines it.

Keras's ``safe_mode`` only refuses ``__lambda__`` bytecode, and Keras 3's legacy ``.h5`` loader
also resolves wrapped layers through the Keras 3 deserialiser, which honours ``module`` keys. So
the scan walks the whole configuration Keras would deserialise (everything but
``compile_config``, which ``compile=False`` never reads), whatever the format wrote.
"""

from __future__ import annotations

import zipfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import h5py

from bncheck.errors import ModelReadError
from bncheck.probe.results import CodeReference
from bncheck.readers import detect
from bncheck.readers.codecs.h5util import MAX_CONFIG_BYTES, parse_json_config, text_attr
from bncheck.readers.keras.keras_archive import CONFIG_MEMBER

#: Top-level packages whose classes Keras itself imports by module name.
KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp"})
#: Keras modules whose functions a model may reference: the modelling API.
MODELLING_MODULES = frozenset(
    {"activations", "constraints", "initializers", "losses", "metrics", "ops", "regularizers"}
)
#: Serialised values, not classes: tensors, arrays, bytes, slices.
_VALUE_CLASSES = frozenset(
    {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__"}
)
#: Where a configuration nests layers: a model's list and a wrapper's layer(s).
_LAYER_KEYS = frozenset({"layer", "forward_layer", "backward_layer"})
#: Not deserialised when loading with ``compile=False``.
_SKIPPED_KEYS = frozenset({"compile_config"})


def model_config(path: str) -> dict[str, Any] | None:
    """The configuration Keras would load from a ``.keras`` or ``.h5`` file; ``None`` for a file
    without one (weights only) or a SavedModel directory."""
    kind = detect.sniff(path).name
    if kind == "keras":
        with zipfile.ZipFile(path) as archive:
            try:
                info = archive.getinfo(CONFIG_MEMBER)
            except KeyError:
                raise ModelReadError("zip archive has no config.json") from None
            if info.file_size > MAX_CONFIG_BYTES:
                raise ModelReadError(f"config.json is larger than {MAX_CONFIG_BYTES >> 20} MiB")
            return parse_json_config(archive.read(info), CONFIG_MEMBER)
    if kind == "hdf5":
        with h5py.File(path, "r") as h5:
            text = text_attr(h5, "model_config")
        return None if text is None else parse_json_config(text, "the model_config attribute")
    return None


def scan_config(
    config: Mapping[str, Any],
    trusted: Collection[str] = (),
    builtin_layers: Collection[str] | None = None,
) -> tuple[CodeReference, ...]:
    """Every piece of code the configuration would load, except classes named in ``trusted``
    (the user's ``--custom-objects``). ``builtin_layers`` are the layer class names Keras's
    legacy loader resolves by name alone; with it, Keras 2 layer entries (which carry no
    ``module``) naming anything else are reported as custom classes."""
    found = _scan(config, "", True, trusted, builtin_layers)
    return tuple(dict.fromkeys(found))


def _scan(
    node: object,
    where: str,
    is_layer: bool,
    trusted: Collection[str],
    builtin_layers: Collection[str] | None,
) -> Iterator[CodeReference]:
    if isinstance(node, list):
        for item in node:
            yield from _scan(item, where, is_layer, trusted, builtin_layers)
        return
    if not isinstance(node, Mapping):
        return
    class_name = node.get("class_name")
    if isinstance(class_name, str):
        where = _child_where(node, where)
        yield from _judge(node, class_name, where, is_layer, trusted, builtin_layers)
    for key, value in node.items():
        if key in _SKIPPED_KEYS:
            continue
        if class_name == "Lambda" and key == "config" and isinstance(value, Mapping):
            # The Lambda's own reference already describes its function.
            value = {k: v for k, v in value.items() if k != "function"}
        nested_layers = key in _LAYER_KEYS or (key == "layers" and isinstance(value, list))
        yield from _scan(value, where, nested_layers, trusted, builtin_layers)


def _child_where(node: Mapping[str, Any], where: str) -> str:
    config = node.get("config")
    name = config.get("name") if isinstance(config, Mapping) else None
    if not isinstance(name, str):
        name = node.get("name")
    if isinstance(name, str) and name:
        return f"{where}/{name}" if where else name
    return where or "(model)"


def _judge(
    node: Mapping[str, Any],
    class_name: str,
    where: str,
    is_layer: bool,
    trusted: Collection[str],
    builtin_layers: Collection[str] | None,
) -> Iterator[CodeReference]:
    if class_name in _VALUE_CLASSES:
        return
    if class_name == "Lambda":
        yield CodeReference("lambda", where, _lambda_function(node.get("config")))
        return
    if class_name == "__lambda__":
        yield CodeReference("bytecode", where, "marshalled Python function")
        return
    if class_name == "function":
        module = node.get("module")
        name = node.get("config")
        if not _modelling_function(module):
            yield CodeReference("function", where, f"{module}.{name}")
        return
    registered = node.get("registered_name")
    if trusted and (class_name in trusted or registered in trusted):
        return
    if "module" in node:
        module = node["module"]
        if module is None:
            yield CodeReference("custom-class", where, str(registered or class_name))
        elif not isinstance(module, str) or module.split(".")[0] not in KERAS_PACKAGES:
            yield CodeReference("custom-class", where, f"{module}.{class_name}")
        return
    if is_layer and builtin_layers is not None and class_name not in builtin_layers:
        yield CodeReference("custom-class", where, class_name)


def _modelling_function(module: object) -> bool:
    if module == "builtins":
        # Keras resolves a bare function name among its own activations, losses and metrics,
        # or among objects the user registered; it never imports anything for it.
        return True
    if not isinstance(module, str):
        return False
    parts = module.split(".")
    if parts[0] != "keras" or len(parts) < 2:
        return False
    section = parts[2] if parts[1] == "src" and len(parts) > 2 else parts[1]
    return section in MODELLING_MODULES


def _lambda_function(config: object) -> str:
    function = config.get("function") if isinstance(config, Mapping) else None
    if isinstance(function, Mapping):
        if function.get("class_name") == "__lambda__":
            return "holding marshalled Python bytecode"
        return f"calling {function.get('module')}.{function.get('config')}"
    if isinstance(function, list):
        return "holding marshalled Python bytecode"
    if isinstance(function, str):
        return f"calling {function}"
    return "with an unreadable function"


def refusal(content: Sequence[CodeReference]) -> str | None:
    """Why a model holding ``content`` must not be loaded without ``--unsafe``."""
    if not content:
        return None
    custom = sorted({ref.detail for ref in content if ref.kind == "custom-class"})
    code = [ref for ref in content if ref.kind != "custom-class"]
    reasons = []
    if code:
        listed = "; ".join(ref.describe for ref in code[:3])
        more = f" and {len(code) - 3} more" if len(code) > 3 else ""
        reasons.append(
            f"the file holds code ({listed}{more}); pass --unsafe to run it if you trust the file"
        )
    if custom:
        reasons.append(
            f"it needs custom classes bncheck does not have ({', '.join(custom[:5])}); pass "
            "--custom-objects FILE.py defining them"
        )
    return "; ".join(reasons)
