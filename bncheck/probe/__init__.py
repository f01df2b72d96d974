"""The probe: run a model in inference and training mode and measure what BatchNorm does.

``runner.run_probe`` is the entry point. TensorFlow and Keras are imported inside functions only,
so importing this package (and the TF-free ``results``, ``safety`` and ``data`` modules) is cheap.
"""
