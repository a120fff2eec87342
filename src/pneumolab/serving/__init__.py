"""Serving: export a run to ONNX (verified against PyTorch), the HTTP API and web page.
Scoring with onnxruntime lives in :mod:`pneumolab.inference.onnx_backend`.

Names are imported on first use (exporting loads PyTorch).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["export_onnx"]

_LAZY = {"export_onnx": "pneumolab.serving.export"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pneumolab.serving' has no attribute {name!r}")
