"""Importing TensorFlow and Keras for the commands that run models."""

from __future__ import annotations

import os
import sys


def import_keras() -> None:
    """Import TensorFlow and Keras once, sending their C++ start-up chatter (oneDNN and CUDA
    notices that ``TF_CPP_MIN_LOG_LEVEL`` does not silence) to the null device. Where bncheck
    imports TensorFlow itself (its commands), TensorFlow's Python warnings, notes for whoever
    writes the traced functions (retracing), are left out too; a program that imported it keeps
    its own logging."""
    if "keras" in sys.modules and "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import keras  # noqa: F401
            import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    tensorflow.get_logger().setLevel("ERROR")
