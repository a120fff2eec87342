"""Serving: export a run to ONNX (verified against PyTorch) and score with onnxruntime.

Names are imported on first use, so ``pneumolab.serving.onnx_backend`` loads without PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OnnxBackend", "export_onnx", "run_onnx_backend"]

_LAZY = {
    "OnnxBackend": "pneumolab.serving.onnx_backend",
    "run_onnx_backend": "pneumolab.serving.onnx_backend",
    "export_onnx": "pneumolab.serving.export",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pneumolab.serving' has no attribute {name!r}")
