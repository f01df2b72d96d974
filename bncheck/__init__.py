"""bncheck: check and repair the BatchNormalization layers of saved TensorFlow/Keras models."""

__version__ = "0.1.0"
