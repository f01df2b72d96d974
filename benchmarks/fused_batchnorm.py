"""What a hand-written BatchNorm costs: tf.nn.moments and the normalisation arithmetic, op by op
(the layer of seed 002), against the fused kernel, in one training step's forward and backward
pass over a 4-D batch. The ratio backs BN021's advice.

    python benchmarks/fused_batchnorm.py [--shape 32,56,56,64] [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="32,56,56,64", help="batch,height,width,channels")
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    import tensorflow as tf

    shape = tuple(int(size) for size in args.shape.split(","))
    x = tf.random.stateless_normal(shape, seed=(1, 2))
    gamma = tf.Variable(tf.ones(shape[-1]))
    beta = tf.Variable(tf.zeros(shape[-1]))

    def by_hand(x: Any) -> Any:
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        inv = tf.math.rsqrt(variance + 1e-3) * gamma
        return x * inv - mean * inv + beta

    def fused(x: Any) -> Any:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-3, is_training=True)
        return y

    def step(normalise: Callable[[Any], Any]) -> Any:
        @tf.function
        def run(x: Any) -> Any:
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tf.reduce_sum(tf.square(normalise(x)))
            return tape.gradient(loss, [x, gamma, beta])

        return run

    steps = {"by hand": step(by_hand), "fused": step(fused)}
    for run in steps.values():
        run(x)  # trace
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeat):  # interleaved, so that load on the machine hits both alike
        for name, run in steps.items():
            start = time.perf_counter()
            [tensor.numpy() for tensor in run(x)]
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:8} {value * 1e3:8.2f} ms per step (median of {args.repeat})")
    print(f"by hand / fused: {medians['by hand'] / medians['fused']:.2f}x on shape {shape}")


if __name__ == "__main__":
    main()
