"""The Keras 3 weights layout (``model.weights.h5`` inside ``.keras``, and ``.weights.h5``).

Each layer that owns variables has a group ``<path>/vars`` whose datasets are named ``0``, ``1``,
... in creation order, trainable variables first (``Layer.save_own_variables``). A
BatchNormalization layer creates gamma (if ``scale``), beta (if ``center``), moving_mean,
moving_variance and, with ``renorm``, three more statistics. Keras 3.15 and later also record
the layer's name as the ``name`` attribute of ``vars``; older files do not.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import h5py
import numpy as np

from bncheck.errors import ModelReadError
from bncheck.model import BNLayer
from bncheck.readers.codecs.h5util import (
    ObjectID,
    enter_group,
    hard_links,
    links_of,
    open_group,
    open_hard,
    open_listed,
    open_path,
    read_bn_array_id,
    text_attr_id,
)

#: Group names Keras 3 derives from the BatchNorm classes (``batch_normalization_3``).
_BN_GROUP = re.compile(r"^(sync_)?batch_normalization(_v[12])?(_\d+)?$")
_COUNTER = re.compile(r"^(.*?)(?:_(\d+))?$")

#: Class names recorded for BN layers recognised without a configuration.
INFERRED_BY_GROUP = "BatchNormalization (by group name)"
INFERRED_BY_ARRAYS = "unknown (4 per-channel arrays)"


def bn_roles(center: bool, scale: bool, renorm: bool) -> list[str | None]:
    """The array held by each saved variable of a BN layer, in saving order (None: not used)."""
    roles: list[str | None] = []
    if scale:
        roles.append("gamma")
    if center:
        roles.append("beta")
    roles += ["moving_mean", "moving_variance"]
    if renorm:
        roles += [None, None, None]  # moving_stddev, renorm_mean, renorm_stddev
    return roles


#: A saved variable: its dataset, the dataset's address (its identity) and its path.
Variable = tuple[ObjectID, int, str]


def indexed_variables(group: ObjectID, where: str) -> dict[int, Variable] | None:
    """The datasets of ``group/vars`` by index, missing ones left out; ``None`` when there is no
    ``vars`` group. ``group`` is the layer's group, at ``where``."""
    found = open_hard(group, "vars", where)
    if found is None:
        return None
    return variables_of(found[0], where)


def variables_of(vars_group: ObjectID, where: str) -> dict[int, Variable]:
    """The datasets of the ``vars`` group of the layer at ``where``, by index."""
    if not isinstance(vars_group, h5py.h5g.GroupID):
        raise ModelReadError(f"{where}/vars is not a group")
    links = links_of(vars_group)
    if not all(key.isdigit() and key == str(int(key)) for key, _, _ in links):
        keys = sorted(key for key, _, _ in links)
        raise ModelReadError(f"{where}/vars has unexpected variable names {keys[:8]}")
    datasets = {}
    vars_where = f"{where}/vars"
    for link in links:
        key = link[0]
        dataset, address = open_listed(vars_group, link, vars_where)
        if not isinstance(dataset, h5py.h5d.DatasetID):
            raise ModelReadError(f"{vars_where}/{key} is not a dataset")
        datasets[int(key)] = (dataset, address, f"{vars_where}/{key}")
    return datasets


def saved_variables(group: ObjectID, where: str) -> list[Variable] | None:
    """The datasets of ``group/vars`` in index order; ``None`` when there is no ``vars`` group."""
    indexed = indexed_variables(group, where)
    if indexed is None:
        return None
    if sorted(indexed) != list(range(len(indexed))):
        raise ModelReadError(f"{where}/vars has unexpected variable names {sorted(indexed)[:8]}")
    return [indexed[index] for index in range(len(indexed))]


def saved_name(group: ObjectID, where: str) -> str | None:
    """The layer name Keras 3.15+ records on ``vars``; ``None`` in older files."""
    vars_group = open_group(group, "vars", where)
    return None if vars_group is None else text_attr_id(vars_group, "name")


def role_locations(roles: list[str | None], where: str) -> dict[str, str]:
    """The dataset path of each array of a BN layer whose variables sit in ``where/vars``."""
    return {role: f"{where}/vars/{index}" for index, role in enumerate(roles) if role is not None}


def read_roles(
    datasets: list[Variable], roles: list[str | None], where: str
) -> dict[str, np.ndarray]:
    if len(datasets) != len(roles):
        raise ModelReadError(
            f"{where} holds {len(datasets)} variables where its configuration implies {len(roles)}"
        )
    arrays = {}
    for (dataset, address, name), role in zip(datasets, roles, strict=True):
        if role is not None:
            arrays[role] = read_bn_array_id(dataset, address, name)
    check_shapes(arrays, where)
    return arrays


def check_shapes(arrays: Mapping[str, np.ndarray], where: str) -> None:
    """All arrays of one BN layer must have one value per channel, the same channels."""
    shapes = {role: np.shape(array) for role, array in arrays.items()}
    if len(set(shapes.values())) > 1:
        described = ", ".join(f"{role} {shape}" for role, shape in shapes.items())
        raise ModelReadError(f"{where}: BatchNorm arrays disagree in shape ({described})")


class KnownLayer(NamedTuple):
    """A layer whose place in the weights file is known from the configuration."""

    path: tuple[str, ...]
    trainable: bool | None


def scan_for_batchnorm(
    root: ObjectID,
    claimed: frozenset[tuple[str, ...]],
    known: Mapping[tuple[str, ...], KnownLayer],
    leaves: frozenset[tuple[str, ...]] = frozenset(),
) -> Iterator[BNLayer]:
    """Find BatchNorm layers no configuration told us about.

    ``claimed`` groups were already read; ``known`` maps group paths to layer paths, so that an
    unknown BN inside a known custom layer is named after it (a known layer is no BN layer: its
    class is known). A group named by a BN class is BatchNorm; a group named by an attribute
    (inside a custom layer or wrapper) is taken as BatchNorm when it holds exactly four
    per-channel arrays and either its names say so (``self.bn``, ``norm1``, a layer named
    ``batch_normalization_3``) or the last array, a variance, is nowhere negative. A BatchNorm
    whose variance went negative is thus still found, and judged, when its names tell what it is.

    ``leaves`` are the groups of layers of Keras's own classes that hold no other layer (a
    ``Conv2D``, a ``BatchNormalization``): Keras loads nothing below them but their own
    variables, so the walk does not open them.
    """
    root_address = int(h5py.h5o.get_info(root).addr)
    for segments, group in _layer_groups(root, (), root_address, set(), leaves):
        if not segments or segments in claimed or segments in known:
            continue
        class_named = len(segments) >= 2 and _is_container(segments[-2])
        if class_named and not _BN_GROUP.match(segments[-1]):
            continue  # named after another class: decided without reading it
        where = "/".join(segments)
        datasets = saved_variables(group, where)
        if not datasets:
            continue
        if class_named:
            roles = _roles_from_count(datasets)
            if roles is None:
                continue
            class_name = INFERRED_BY_GROUP
        else:
            if not _looks_like_batchnorm(datasets, segments[-1], saved_name(group, where)):
                continue
            roles = bn_roles(center=True, scale=True, renorm=False)
            class_name = INFERRED_BY_ARRAYS
        arrays = read_roles(datasets, roles, where)
        path = _layer_path(root, segments, known)
        ancestor = _nearest_known(segments, known)
        yield BNLayer.without_config(
            arrays,
            path="/".join(path),
            name=path[-1],
            class_name=class_name,
            trainable=None if ancestor is None else ancestor.trainable,
            source=f"{where}/vars",
            locations=role_locations(roles, where),
        )


def _layer_groups(
    group: ObjectID,
    segments: tuple[str, ...],
    address: int,
    visited: set[int],
    leaves: frozenset[tuple[str, ...]],
) -> Iterator[tuple[tuple[str, ...], ObjectID]]:
    """Every group that may be a layer, depth first, in Keras counter order within a level;
    each once (``enter_group``); the groups of ``leaves`` and below them are not opened."""
    where = "/".join(segments)
    enter_group(visited, address, len(segments), where)
    yield segments, group
    below = sorted(
        ((key, found) for key, found in hard_links(group, where) if key != "vars"),
        key=lambda item: _natural_key(item[0]),
    )
    for key, found in below:
        path = (*segments, key)
        if path in leaves:
            continue
        opened = h5py.h5o.open(group, key.encode("utf-8", "surrogateescape"))
        if isinstance(opened, h5py.h5g.GroupID):
            yield from _layer_groups(opened, path, found, visited, leaves)


def _natural_key(name: str) -> tuple[str, int]:
    match = _COUNTER.match(name)
    assert match is not None  # the pattern matches every string
    return match.group(1), int(match.group(2) or -1)


def _is_container(segment: str) -> bool:
    return segment == "layers" or segment.startswith("container")


def _roles_from_count(datasets: list[Variable]) -> list[str | None] | None:
    """Roles of a class-named BN group without configuration, from its variable count."""
    count = len(datasets)
    if count == 4:
        return bn_roles(center=True, scale=True, renorm=False)
    if count == 2:
        return bn_roles(center=False, scale=False, renorm=False)
    if count == 7:
        return bn_roles(center=True, scale=True, renorm=True)
    if count == 3:
        # center=False or scale=False: the one affine array is gamma (starts at 1) or beta
        # (starts at 0); its values tell which is the likelier.
        first = read_bn_array_id(*datasets[0], "first variable")
        finite = first[np.isfinite(first)]
        is_gamma = finite.size > 0 and abs(float(finite.mean()) - 1.0) < abs(float(finite.mean()))
        return bn_roles(center=not is_gamma, scale=is_gamma, renorm=False)
    return None


#: Words of an attribute or layer name that mean BatchNorm: ``bn``, ``conv1_bn``, ``norm1``,
#: ``batch_norm``, ``BatchNormalization_3``.
_BATCHNORM_WORDS = frozenset({"bn", "norm", "batchnorm", "batch", "batchnormalization"})


def _looks_like_batchnorm(datasets: list[Variable], *names: str | None) -> bool:
    if len(datasets) != 4:
        return False
    shapes = {dataset.shape for dataset, _, _ in datasets}
    if len(shapes) != 1 or len(next(iter(shapes)) or ()) != 1:
        return False
    if any(dataset.dtype.kind != "f" for dataset, _, _ in datasets):
        return False
    words = {word for name in names if name for word in re.findall(r"[a-z]+", name.lower())}
    if words & _BATCHNORM_WORDS:
        return True
    variance = read_bn_array_id(*datasets[3], "fourth variable")
    return bool(np.all(variance[np.isfinite(variance)] >= 0))


def _nearest_known(
    segments: tuple[str, ...], known: Mapping[tuple[str, ...], KnownLayer]
) -> KnownLayer | None:
    for cut in range(len(segments), -1, -1):
        if segments[:cut] in known:
            return known[segments[:cut]]
    return None


def _layer_path(
    root: ObjectID, segments: tuple[str, ...], known: Mapping[tuple[str, ...], KnownLayer]
) -> tuple[str, ...]:
    """Name a group after the nearest known layer, then as ``layer_paths`` names a live model's
    layers: a model's layers (under a container group) and a wrapper's ``layer`` by their saved
    names while a configuration describes them, and from the first attribute of a custom layer
    on by their groups, as Keras's saving names them. Layers created by code, not configuration,
    get new names in each process: the name saved in ``vars`` need not be a loaded model's."""
    start = 0
    path: list[str] = []
    for cut in range(len(segments), -1, -1):
        if segments[:cut] in known:
            path = list(known[segments[:cut]].path)
            start = cut
            break
    described = True
    for end in range(start + 1, len(segments) + 1):
        segment = segments[end - 1]
        if _is_container(segment):
            continue
        after_container = end >= 2 and _is_container(segments[end - 2])
        described = described and (after_container or segment == "layer")
        name = None
        if described:
            group = open_path(root, segments[:end])
            name = None if group is None else saved_name(group, "/".join(segments[:end]))
        path.append(name or segment)
    return tuple(path)
