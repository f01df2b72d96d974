"""The runtimes the probe and ``recalibrate`` run models in, each behind the runner protocol
(``bncheck.probe.runtime``): Keras, ONNX Runtime, TorchScript and SavedModel signatures."""
