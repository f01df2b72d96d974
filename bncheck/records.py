"""Immutable records: what ``dataclass(frozen=True)`` makes, for a third of what it costs.

``dataclass(frozen=True)`` writes six methods of each class as source text and compiles them:
``__init__``, ``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__`` and ``__delattr__``. That
is about 0.4 ms a class, and every command pays it for each record class it imports: about 35
on a static inspection, 12 ms of CPU, a third of what importing bncheck costs. ``record`` has
``dataclass`` write ``__init__`` only, the one method whose code differs from class to class,
and gives the class the other five, written once here to do what dataclass's do:

- two records are equal when they are of the same class and their fields are equal, fields
  declared with ``compare=False`` aside; a record and anything else are not;
- the hash is that of the same fields;
- the representation is ``Name(field=value, ...)``, fields declared with ``repr=False`` aside;
- assigning or deleting an attribute raises ``dataclasses.FrozenInstanceError``, except the
  first assignment of each field, which is ``__init__``'s.

The class is a dataclass still: ``dataclasses.fields``, ``replace`` and ``asdict`` work, and
type checkers read it as a frozen dataclass (``dataclass_transform``).
"""

from __future__ import annotations

import dataclasses
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")

if TYPE_CHECKING:  # in typing from Python 3.11; a marker for type checkers only
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: object) -> Callable[[T], T]:
        return lambda function: function


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field,))
def record(cls: type[T]) -> type[T]:
    """``cls`` as an immutable dataclass (see the module's text)."""
    made = dataclasses.dataclass(cls, repr=False, eq=False)
    fields = dataclasses.fields(made)  # type: ignore[arg-type]
    made.__record_compared__ = tuple(f.name for f in fields if f.compare)  # type: ignore[attr-defined]
    made.__record_shown__ = tuple(f.name for f in fields if f.repr)  # type: ignore[attr-defined]
    for name, method in _METHODS.items():
        if name not in made.__dict__:  # a method the class writes itself stays its own
            setattr(made, name, method)
    return made


def _compared(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in type(self).__record_compared__)


def _eq(self: Any, other: object) -> bool:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _hash(self: Any) -> int:
    return hash(_compared(self))


@reprlib.recursive_repr()
def _repr(self: Any) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__record_shown__)
    return f"{type(self).__qualname__}({shown})"


def _setattr(self: Any, name: str, value: Any) -> None:
    if name in self.__dict__ or name not in self.__dataclass_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


_METHODS = {
    "__eq__": _eq,
    "__hash__": _hash,
    "__repr__": _repr,
    "__setattr__": _setattr,
    "__delattr__": _delattr,
}
