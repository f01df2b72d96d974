"""Static inspection never imports TensorFlow, Keras or matplotlib: importing them costs
seconds."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import FIXTURES

PROBE = """
import sys
from bncheck.cli import main
try:
    main(["inspect", sys.argv[1], "--format", "json"])
except SystemExit as done:
    code = done.code
heavy = sorted(
    m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras", "matplotlib")
)
print("EXIT", code, file=sys.stderr)
print("HEAVY", heavy, file=sys.stderr)
"""


@pytest.mark.parametrize(
    "fixture",
    [
        "keras3/nested.keras",
        "keras3/nested.h5",
        "keras2/nested.h5",
        "weights/nested.weights.h5",
        "weights/keras2_odd_names_weights.h5",
    ],
)
def test_static_inspect_does_not_import_tensorflow(fixture: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(FIXTURES / fixture)], capture_output=True, text=True
    )
    assert "EXIT 0" in done.stderr, done.stderr
    assert "HEAVY []" in done.stderr, done.stderr
