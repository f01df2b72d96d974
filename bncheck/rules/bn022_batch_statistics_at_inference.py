"""The layer keeps no running statistics, so inference normalises each batch with its own.

A PyTorch BatchNorm built with ``track_running_stats=False`` has no running_mean or running_var:
in ``model.eval()`` as in ``model.train()`` it normalises every batch with that batch's mean and
variance. An ONNX graph exported from such a network computes them in the graph (``ReduceMean``
feeding the ``BatchNormalization`` node). A sample's prediction then depends on the other samples
in its batch: results change with the batch size and the batch's composition, and a batch of
one sample normalises it against itself. It is BN016's finding, read from the file instead of
measured.

It is reported as a warning because it is a choice the code makes on purpose (some generative
and small-data models want it), not a file gone wrong; it fails a run only with
``--fail-on warning``. Turn it off for a model that was built this way deliberately.

Why it happens: ``nn.BatchNorm2d(..., track_running_stats=False)``, often copied from code that
wanted instance-norm-like behaviour, or set to work around statistics that seemed wrong.

How to fix: if predictions must not depend on the batch, build the layers with
``track_running_stats=True`` (the default), re-estimate their running statistics from training
data in ``model.train()`` mode with gradients off, and save again; otherwise serve fixed-size
batches of the same kind the model was validated with, and ignore this rule for the model.

Passing: ``nn.BatchNorm2d(16)``: running_mean and running_var are in the file.
Failing: ``nn.BatchNorm2d(16, track_running_stats=False)``, saved with ``torch.save(model)``,
scripted, traced, or exported to ONNX.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import ModelDescription

ID = "BN022"
NAME = "batch-statistics-at-inference"
DEFAULT_SEVERITY = Severity.WARNING
NEEDS = "model"
OPTIONS: Mapping[str, float] = {}


def check(description: ModelDescription, options: Mapping[str, float]) -> Iterator[Problem]:
    for layer in description.batch_statistics:
        words = layer.vocabulary
        statistics = " and ".join(words.array(n) for n in ("moving_mean", "moving_variance"))
        yield Problem(
            message=(
                f"the layer keeps no {statistics} ({layer.evidence}): in {words.inference_mode} "
                "it normalises each batch with that batch's own mean and variance, so a "
                "sample's prediction depends on the rest of its batch and on the batch size"
            ),
            layer=layer.path,
            details={
                "class": layer.class_name,
                "channels": layer.channels,
                "evidence": layer.evidence,
            },
        )
