"""Readers of PyTorch files (``.pt``, ``.pth``, TorchScript archives) and safetensors files,
read without PyTorch and without running anything a pickle names."""
