"""The graph computes batch normalisation op by op instead of with the fused kernel.

A TF1 checkpoint's graph (its ``.meta`` file) or a SavedModel's graph takes the batch moments of
a 4-D (or 5-D) input with ``tf.nn.moments`` (``Mean``, ``SquaredDifference``, ``Mean`` over the
batch and spatial axes) and then normalises with separate ``rsqrt``, multiply and add ops. That
is what a hand-written BatchNorm looks like, and what the built-in layer does only when told not
to fuse. The fused kernel (``FusedBatchNormV3``) does the same work in one op: measured on one
training step (forward and backward) over a 32x56x56x64 batch, op by op took 1.76 times as long
on 2 CPU cores, and a user who had replaced the built-in layer with their own
measured twice the run time. The results are the same: this is advice on speed, not correctness.

Why it happens: a BatchNorm written by hand (often to put ``tf.cond`` or quantisation on its
variables), or ``BatchNormalization(fused=False)`` in tf.keras.

How to fix: use ``tf.keras.layers.BatchNormalization`` (fused by default on 4-D inputs), or call
``tf.compat.v1.nn.fused_batch_norm`` yourself: with ``is_training=True`` it returns the batch
moments for your own moving-average updates, and with ``is_training=False`` it normalises with
the moving statistics (one call per mode, chosen with ``tf.cond``).

Passing: ``tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, is_training=True)`` on a 4-D input.
Failing: ``mean, var = tf.nn.moments(x, [0, 1, 2])`` then ``(x - mean) * tf.math.rsqrt(var +
eps) * gamma + beta``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bncheck.findings import Problem, Severity
from bncheck.model import ModelDescription

ID = "BN021"
NAME = "unfused-batchnorm"
DEFAULT_SEVERITY = Severity.INFO
NEEDS = "model"
OPTIONS: Mapping[str, float] = {}


def check(description: ModelDescription, options: Mapping[str, float]) -> Iterator[Problem]:
    for moments in description.batch_moments:
        # Batch moments reduce every axis but the channels'.
        rank = len(moments.axes) + 1
        yield Problem(
            message=(
                f"the graph normalises a {rank}-D input op by op: tf.nn.moments over axes "
                f"{list(moments.axes)}, then the arithmetic; the fused kernel "
                "(tf.compat.v1.nn.fused_batch_norm, or BatchNormalization with fused left on) "
                "does it in one op"
            ),
            layer=moments.where,
            details={
                "function": moments.function,
                "scope": moments.scope,
                "axes": list(moments.axes),
            },
        )
