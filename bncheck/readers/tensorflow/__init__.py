"""Readers of TensorFlow files: checkpoints, SavedModels, tensor bundles and graphs, read
without TensorFlow."""
