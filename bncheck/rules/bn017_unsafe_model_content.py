"""The model file holds code: Lambda layers, foreign functions, custom classes or unsafe ops.

Loading a Keras model rebuilds what its configuration names, and running it runs that code.
bncheck's static inspection never loads a model; the probe has to. Before loading, it reads the
configuration (or, for a SavedModel, the graph) and looks for:

- ``Lambda`` layers, whose function is marshalled Python bytecode or a function named by module;
- function references outside Keras's modelling API (``os.system``, ``keras.utils.get_file``:
  the CVE-2025-1550 pattern of a crafted ``config.json``);
- classes Keras does not ship (custom layers), unless ``--custom-objects FILE.py`` provides them;
- graph ops not known to be pure: in a SavedModel's graph and function library, any op off
  the allowlist of side-effect-free TensorFlow ops (``PrintV2`` printing to a file, ``SaveV2``,
  ``WriteFile``, summary writers, ``PyFunc``, ops nobody registered); in an ONNX model, any
  operator outside the standard domains (``com.microsoft`` contrib ops, custom ops). See
  ``bncheck/probe/pure_ops.py`` for the lists and how they were derived.

A TorchScript archive is compiled code, not a graph of ops that could be checked: it is always
reported here, and runs only with ``--unsafe``.

If any is found the probe is skipped, and the report says why. The finding is then an error: the
check that was asked for did not run, so a CI gate must not pass as if it had (a model whose
statistics are broken would go through). ``--unsafe`` runs the probe anyway (Keras then loads with
``safe_mode=False``), for files you trust; a warning stays, saying so. Without ``--unsafe`` Keras
always loads with ``safe_mode=True`` as a second line of defence.

How to fix: keep model files free of code (replace Lambda layers by registered custom layers or
Keras ops layers), and pass your own layers with ``--custom-objects``.

Passing: a functional model of Conv2D, BatchNormalization, ReLU and Dense layers.
Failing: ``layers.Lambda(lambda t: t * 3)`` anywhere in the model; a SavedModel whose serving
function calls ``tf.print(x, output_stream="file:///tmp/log")``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from bncheck.findings import Escalation, Problem, Severity

if TYPE_CHECKING:  # the probe's types stay off the static path
    from bncheck.probe.results import ProbeResult

ID = "BN017"
NAME = "unsafe-model-content"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "probe"
OPTIONS: Mapping[str, float] = {}

_LISTED = 5


def check(result: ProbeResult, options: Mapping[str, float]) -> Iterator[Problem]:
    if not result.content:
        return
    listed = "; ".join(reference.describe for reference in result.content[:_LISTED])
    if len(result.content) > _LISTED:
        listed += f"; and {len(result.content) - _LISTED} more"
    outcome = (
        "so the probe was skipped"
        if result.skipped is not None
        else "the probe ran it because --unsafe was given"
    )
    yield Problem(
        message=f"the model file holds code or classes bncheck does not run by default: {listed}; "
        f"{outcome}",
        details={
            "references": [
                {"kind": ref.kind, "where": ref.where, "detail": ref.detail}
                for ref in result.content
            ],
            "probe_ran": result.ran,
        },
        escalation=Escalation.SEVERE if result.skipped is not None else None,
    )
