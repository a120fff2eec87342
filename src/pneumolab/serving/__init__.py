"""Serving: export a run to ONNX (verified against PyTorch), the HTTP API and web page.
Scoring with onnxruntime lives in :mod:`pneumolab.inference.onnx_backend`; the export is
:func:`pneumolab.serving.export.export_onnx`.
"""
