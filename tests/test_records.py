"""``record`` makes what ``dataclass(frozen=True)`` makes: each behaviour is compared with a
frozen dataclass of the same definition."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from bncheck.records import record


def _point(decorate: Callable[[type], type]) -> Any:
    @decorate
    class Point:
        x: float
        y: float = 0.0
        tags: tuple[str, ...] = ()
        label: str = dataclasses.field(default="", compare=False)
        cache: dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)

        def norm(self) -> float:
            return float((self.x**2 + self.y**2) ** 0.5)

    return Point


Point = _point(record)
Frozen = _point(dataclasses.dataclass(frozen=True))


#: Picklable, as the results a worker process sends are.
@record
class Pickled:
    name: str
    values: tuple[int, ...] = ()


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [((1.0,), {}), ((1.0, 2.0), {"tags": ("a",)}), ((3.0,), {"label": "p", "y": -1.5})],
)
def test_construction_equality_hash_and_repr_are_a_frozen_dataclass_s(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    ours, theirs = Point(*args, **kwargs), Frozen(*args, **kwargs)
    assert repr(ours) == repr(theirs)
    assert ours == Point(*args, **kwargs) and hash(ours) == hash(Point(*args, **kwargs))
    assert hash(ours) == hash(theirs)  # the hash of the same compared fields
    assert ours.norm() == theirs.norm()
    assert [f.name for f in dataclasses.fields(ours)] == [
        f.name for f in dataclasses.fields(theirs)
    ]
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)


def test_fields_declared_out_of_comparison_are_left_out_and_other_classes_are_unequal() -> None:
    assert Point(1.0, label="a") == Point(1.0, label="b")
    assert hash(Point(1.0, label="a")) == hash(Point(1.0, label="b"))
    assert Point(1.0) != Point(2.0)
    assert Point(1.0) != Frozen(1.0)  # same fields, another class: as dataclass compares
    assert Point(1.0) != (1.0, 0.0, ())
    assert Point(1.0).cache is not Point(1.0).cache  # each gets its own default


def test_fields_cannot_be_assigned_or_deleted_and_nothing_can_be_added() -> None:
    point = Point(1.0)
    for name in ("x", "label", "other"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(point, name, 2.0)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(Frozen(1.0), name, 2.0)  # as a frozen dataclass refuses them
    with pytest.raises(dataclasses.FrozenInstanceError):
        del point.x
    assert point.x == 1.0 and not hasattr(point, "other")


def test_replace_copy_and_pickle_make_equal_records() -> None:
    point = Point(1.0, 2.0, ("a",), label="p")
    moved = dataclasses.replace(point, x=5.0)
    assert (moved.x, moved.y, moved.tags, moved.label) == (5.0, 2.0, ("a",), "p")
    assert copy.copy(point) == point and copy.deepcopy(point) == point
    kept = Pickled("a", (1, 2))
    assert pickle.loads(pickle.dumps(kept)) == kept
    with pytest.raises(dataclasses.FrozenInstanceError):
        pickle.loads(pickle.dumps(kept)).name = "b"


def test_a_method_the_class_writes_is_its_own_and_a_record_holding_itself_shows_dots() -> None:
    @record
    class Named:
        name: str

        def __repr__(self) -> str:
            return f"<{self.name}>"

    assert repr(Named("n")) == "<n>"

    @record
    class Box:
        items: list[Any]

    @dataclasses.dataclass(frozen=True)
    class FrozenBox:
        items: list[Any]

    box, frozen = Box([]), FrozenBox([])
    box.items.append(box)
    frozen.items.append(frozen)
    assert (
        repr(box) == repr(frozen).replace("FrozenBox", "Box") == f"{Box.__qualname__}(items=[...])"
    )
