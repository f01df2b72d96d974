"""The PyTorch file is a pickle that calls functions when it is loaded.

``torch.load`` (without ``weights_only=True``, the default before PyTorch 2.6 and still a common
argument) unpickles a file by calling whatever functions its pickle names, with arguments the
file chooses: ``posix.system('curl ... | sh')`` is one line of a pickle. bncheck reads the pickle
without calling anything; this rule lists every call the file asks for beyond rebuilding tensors
and plain data (containers, NumPy arrays, ``argparse.Namespace`` and the like), with where in the
pickle it is. Objects of classes, as ``torch.save(model)`` writes them, are noted but not reported
here: loading them runs their classes' code, which is yours if the file is yours.

``torch.load(weights_only=True)`` refuses such files but has had bypasses (CVE-2025-32434 through
TorchScript archives, CVE-2026-24747 through crafted tensor metadata), so do not rely on it for
files you do not trust.

How to fix: do not load the file. If it is yours, save a state dict instead
(``torch.save(model.state_dict(), path)``) or use safetensors, which holds no code at all.

Passing: ``torch.save(model.state_dict(), "model.pt")``.
Failing: a checkpoint holding an object whose ``__reduce__`` returns ``(os.system, ("touch x",))``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import ModelDescription

ID = "BN019"
NAME = "pickled-code"
DEFAULT_SEVERITY = Severity.ERROR
NEEDS = "model"
OPTIONS: Mapping[str, float] = {}

_LISTED = 3


def check(description: ModelDescription, options: Mapping[str, float]) -> Iterator[Problem]:
    calls = description.pickled_calls
    if not calls:
        return
    listed = "; ".join(
        f"{call.target}({call.arguments}) at {call.where}" for call in calls[:_LISTED]
    )
    if len(calls) > _LISTED:
        listed += f"; and {len(calls) - _LISTED} more"
    yield Problem(
        message=(
            f"loading this file with torch.load would call {listed}; bncheck called none of them"
        ),
        details={
            "calls": [
                {"target": call.target, "arguments": call.arguments, "where": call.where}
                for call in calls
            ]
        },
    )
