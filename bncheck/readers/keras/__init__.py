"""Readers of Keras files: ``.keras`` archives, full-model and weights-only HDF5 files,
sharded weights, and Keras model configurations."""
