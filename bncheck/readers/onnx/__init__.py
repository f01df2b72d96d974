"""Readers of ONNX models, with protobuf alone: neither ``onnx`` nor a runtime is imported."""
