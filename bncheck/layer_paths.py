"""The paths of a live Keras 3 model's BatchNormalization layers, as the readers name them in its
saved file.

A layer that a configuration describes (a Functional or Sequential model's layers, a wrapper's
``layer``) is named by its name: the configuration records it, so it is the same in every process.
A layer that a custom layer creates in ``__init__`` is named by the attribute that holds it
(``self.bn``; ``blocks/batch_normalization_1`` for the second BatchNorm of a list ``self.blocks``),
as Keras's saving addresses it: its name is generated anew in each process (``batch_normalization``
in one, ``batch_normalization_2`` in another that built other models first), so the name stored
in the file need not be the name the loaded model has.

Keras is imported inside functions.
"""

from __future__ import annotations

from typing import Any

from bncheck.readers.keras_config import to_snake_case

#: The attribute under which wrappers (TimeDistributed, Bidirectional, ...) hold the layer their
#: configuration describes.
_WRAPPED = "layer"


def batchnorm_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """Every BatchNormalization layer of ``model`` with its path and the layer holding it, depth
    first, each layer once."""
    import keras

    found: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, parent: Any, prefix: tuple[str, ...]) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = (*prefix, layer.name if parent is None else child_name(parent, layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(("/".join(path), layer, parent))
            return
        for child in layer._flatten_layers(include_self=False, recursive=False):
            walk(child, layer, path)

    walk(model, None, ())
    return found


def child_name(parent: Any, child: Any) -> str:
    """How the readers name ``child`` inside ``parent`` (see the module's docstring)."""
    import keras

    if isinstance(parent, keras.Sequential) or _is_functional(parent):
        return str(child.name)
    # Keras saves attributes in sorted order, private ones last, and each object once.
    for attribute, value in sorted(vars(parent).items(), key=lambda item: _saving_order(item[0])):
        if value is child:
            return str(child.name) if attribute == _WRAPPED else attribute
        if isinstance(value, (list, tuple, dict)):
            named = _container_names(list(value.values()) if isinstance(value, dict) else value)
            if id(child) in named:
                return f"{attribute}/{named[id(child)]}"
    return str(child.name)


def _is_functional(layer: Any) -> bool:
    from keras.src.models.functional import Functional

    return isinstance(layer, Functional)


def _saving_order(attribute: str) -> str:
    return f"~{attribute}" if attribute.startswith("_") else attribute


def _container_names(items: list[Any] | tuple[Any, ...]) -> dict[int, str]:
    """Keras's names for the layers of a list attribute: the snake-case class name, numbered
    from the second of a class on."""
    import keras

    used: dict[str, int] = {}
    names: dict[int, str] = {}
    for item in items:
        if not isinstance(item, keras.layers.Layer):
            continue
        base = to_snake_case(type(item).__name__)
        if base in used:
            used[base] += 1
            names.setdefault(id(item), f"{base}_{used[base]}")
        else:
            used[base] = 0
            names.setdefault(id(item), base)
    return names
