"""Reporters: pure functions from a ``Report`` (and render options) to text, one module per
format."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bncheck.findings import Report
    from bncheck.reporters.options import RenderOptions


class Reporter(Protocol):
    """A format: the ``render`` function of its module, pure, never looking at the terminal."""

    def __call__(self, report: Report, options: RenderOptions, /) -> str: ...


#: Format name -> the module whose ``render`` writes it.
_MODULES = {
    "table": "table",
    "json": "json_format",
    "sarif": "sarif",
    "junit": "junit",
    "markdown": "markdown",
    "github": "github",
}


class _Reporters(Mapping[str, Reporter]):
    """Each format's ``render``, its module imported when the format is asked for: a run writes
    one format, and the others' imports (XML, hashing, tables) cost start-up time."""

    def __getitem__(self, name: str) -> Reporter:
        render: Reporter = import_module(f"{__name__}.{_MODULES[name]}").render
        return render

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


REPORTERS: Mapping[str, Reporter] = _Reporters()


if TYPE_CHECKING:
    # mypy checks every format's render against the protocol.
    from bncheck.reporters import github, json_format, junit, markdown, sarif, table

    _RENDERS: tuple[Reporter, ...] = (
        table.render,
        json_format.render,
        sarif.render,
        junit.render,
        markdown.render,
        github.render,
    )
