"""Serving: export a run to ONNX (verified against PyTorch) and score with onnxruntime."""

from pneumolab.serving.export import export_onnx, run_onnx_backend
from pneumolab.serving.onnx_backend import OnnxBackend

__all__ = ["OnnxBackend", "export_onnx", "run_onnx_backend"]
