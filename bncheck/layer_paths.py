"""The paths of a live Keras 3 model's BatchNormalization layers, as the readers name them in its
saved file.

A layer that the model's configuration describes (the model's own layers, a nested Functional or
Sequential model's layers, a wrapper's ``layer``) is named by its name: the configuration records
it, so it is the same in every process. The layers a custom layer creates in ``__init__``, and
everything inside them, are named as Keras's saving addresses them: by the attribute that holds
them (``self.bn``), and inside a list or a model by their snake-case class name, numbered from
the second of a class on (``blocks/batch_normalization_1``). Their names are generated anew in
each process (``batch_normalization`` in one, ``batch_normalization_2`` in another that built
other models first), so the name stored in the file need not be the loaded model's.

Keras is imported inside functions.
"""

from __future__ import annotations

from typing import Any

from bncheck.readers.keras.keras_config import to_snake_case

#: The attribute under which wrappers (TimeDistributed, Bidirectional, ...) hold the layer their
#: configuration describes.
_WRAPPED = "layer"


def batchnorm_layers(model: Any) -> list[tuple[str, Any, Any]]:
    """Every BatchNormalization layer of ``model`` with its path and the layer holding it, depth
    first, each layer once."""
    import keras

    found: list[tuple[str, Any, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, parent: Any, prefix: tuple[str, ...], described: bool) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        path = (*prefix, layer.name if described else _saving_name(parent, layer))
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(("/".join(path), layer, parent))
            return
        for child in layer._flatten_layers(include_self=False, recursive=False):
            walk(child, layer, path, described and _describes(layer, child))

    walk(model, None, (), True)
    return found


def _describes(parent: Any, child: Any) -> bool:
    """Whether a configuration that describes ``parent`` describes ``child`` too."""
    import keras

    if isinstance(parent, keras.Sequential) or _is_functional(parent):
        return True
    return isinstance(parent, keras.layers.Wrapper) and child is getattr(parent, _WRAPPED, None)


def _saving_name(parent: Any, child: Any) -> str:
    """Where Keras's saving puts ``child`` inside ``parent`` (container segments left out)."""
    import keras

    if isinstance(parent, keras.Sequential) or _is_functional(parent):
        named = _container_names(parent.layers)
        return named.get(id(child), str(child.name))
    # Attributes in sorted order, private ones last, each object once.
    for attribute, value in sorted(vars(parent).items(), key=lambda item: _saving_order(item[0])):
        if value is child:
            return attribute
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
