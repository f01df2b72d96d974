"""docs/api.md is generated from the docstrings: it must be what the generator writes now."""

from __future__ import annotations

import importlib.util

import keras  # noqa: F401  (the guard's page section documents bncheck.keras)

from tests.conftest import REPO


def test_the_api_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen_api", REPO / "docs/gen_api.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    written = (REPO / "docs/api.md").read_text(encoding="utf-8")
    assert written == generator.render(), "docs/api.md is stale: run python docs/gen_api.py"


def test_every_public_name_is_documented() -> None:
    import bncheck

    text = (REPO / "docs/api.md").read_text(encoding="utf-8")
    for name in bncheck.__all__:
        if name not in ("__version__", "keras"):
            assert f"`bncheck.{name}" in text, name
    for name in ("BatchNormGuard", "watch", "BatchNormWatch"):
        assert f"`bncheck.keras.{name}" in text, name
