"""``check_model`` and the guard on Keras's JAX backend, in a child process (the backend is
chosen when Keras is first imported)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FIXTURES, REPO

pytest.importorskip("jax")

CHILD = Path(__file__).with_name("jax_child.py")
STUCK = (
    "after 50 steps the moving statistics of 2 BatchNorm layers have not moved: does your "
    "training loop call the model with training=True? (mlp/first_bn, mlp/second_bn)"
)


@pytest.fixture(scope="module")
def found() -> dict[str, object]:
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, str(CHILD), str(FIXTURES / "keras3/momentum_one.keras")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    return result


def test_check_model_judges_a_loaded_model_like_its_file(found: dict[str, object]) -> None:
    assert found["fixture"] == found["fixture_file"]
    assert found["fixture"] == [
        ["BN001", "cnn/bn1"],
        ["BN001", "cnn/bn2"],
        ["BN008", "cnn/bn1"],
        ["BN008", "cnn/bn2"],
    ]


def test_the_guard_reads_the_state_fit_keeps_outside_the_model(found: dict[str, object]) -> None:
    assert found["fit_healthy"] == {
        "raised": None,
        "steps": 100,
        "moved": ["mlp/first_bn", "mlp/second_bn"],
    }
    assert found["fit_momentum_one"] == {
        "raised": "the moving statistics of 1 BatchNorm layer cannot move: momentum=1.0 keeps "
        "them fixed; use momentum 0.99, and trainable=False to freeze a layer (mlp/second_bn)",
        "steps": 50,
    }


def test_a_stateless_jax_loop_is_watched(found: dict[str, object]) -> None:
    assert found["loop_training"] == {"warnings": []}
    assert found["loop_inference"] == {"warnings": [STUCK]}
