"""Map a model's BatchNorm layers to the variable groups of a checkpoint (``--model``).

Each layer is matched by the strongest evidence available, and the match says which:
``layer path`` (a group's scope is the layer's path, with or without the outermost model's name),
``layer name`` (exactly one group's scope ends with the layer's name), or ``position`` (once
names are used up, the n-th unmatched layer takes the n-th unmatched group, only when both
counts agree; the usual case for object-based checkpoints of a model whose layers were renamed,
and BN020's finding).
"""

from __future__ import annotations

from dataclasses import replace

from bncheck.model import BNLayer, CheckpointContents, CheckpointGroup, LayerMatch

BY_PATH = "layer path"
BY_NAME = "layer name"
BY_POSITION = "position"


def match_layers(
    contents: CheckpointContents, model_path: str, layers: tuple[BNLayer, ...]
) -> CheckpointContents:
    """``contents`` with one ``LayerMatch`` per model layer, in model order."""
    free = list(contents.groups)
    found: dict[int, tuple[CheckpointGroup, str]] = {}

    def take(index: int, group: CheckpointGroup, how: str) -> None:
        found[index] = (group, how)
        free.remove(group)

    for index, layer in enumerate(layers):
        paths = {layer.path, layer.path.split("/", 1)[-1]}
        group = next((g for g in free if paths.intersection(g.names)), None)
        if group is not None:
            take(index, group, BY_PATH)
    for index, layer in enumerate(layers):
        if index in found:
            continue
        named = [g for g in free if any(_last(name) == layer.name for name in g.names)]
        if len(named) == 1:
            take(index, named[0], BY_NAME)
    unmatched = [index for index in range(len(layers)) if index not in found]
    if len(unmatched) == len(free):
        for index, group in zip(unmatched, list(free), strict=True):
            take(index, group, BY_POSITION)
    matches = []
    for index, layer in enumerate(layers):
        group, how = found.get(index, (None, None))
        matches.append(LayerMatch(layer.path, layer.channels, group, how))
    return replace(contents, model=model_path, matches=tuple(matches))


def _last(scope: str) -> str:
    return scope.rsplit("/", 1)[-1]
