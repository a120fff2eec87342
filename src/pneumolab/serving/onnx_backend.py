"""Score uint8 X-ray pixels with an exported ONNX model in onnxruntime (no PyTorch model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pneumolab.data.transforms import normalize_intensity
from pneumolab.errors import ModelError

INPUT_NAME = "pixels"
"""Graph input: float32 ``(N, 1, S, S)`` pixels in [0, 1], after intensity normalisation."""
OUTPUT_NAME = "probability"
"""Graph output: float32 ``(N,)`` pneumonia probabilities (the sigmoid is inside the graph)."""
REQUIRED_METADATA = ("image_size", "intensity")
"""What the backend needs; export writes more (see :func:`pneumolab.serving.export.export_onnx`)."""


class OnnxBackend:
    """An onnxruntime session plus the preprocessing contract stored in the model's metadata.

    Called with uint8 pixels ``(N, 1, S, S)``, exactly what :class:`~pneumolab.Predictor`
    prepares, it applies the run's intensity normalisation (which lives outside the graph),
    scales to [0, 1] and returns probabilities ``(N,)``, like the PyTorch backend.
    """

    def __init__(self, onnx_file: str | Path) -> None:
        self.file = Path(onnx_file)
        if not self.file.is_file():
            raise ModelError(f"{self.file}: ONNX file not found")
        try:
            self.session = ort.InferenceSession(
                str(self.file), providers=ort.get_available_providers()
            )
        except Exception as exc:  # onnxruntime's errors share no base class below Exception
            raise ModelError(f"{self.file}: not a loadable ONNX model ({exc})") from None
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [key for key in REQUIRED_METADATA if key not in self.metadata]
        if missing:
            raise ModelError(
                f"{self.file}: no pneumolab preprocessing metadata ({', '.join(missing)} missing); "
                "export it with `pneumolab export`"
            )
        self.image_size = int(self.metadata["image_size"])
        self.intensity = self.metadata["intensity"]

    def __call__(self, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Pneumonia probabilities for uint8 ``(N, 1, S, S)`` pixels, batch by batch."""
        expected = (1, self.image_size, self.image_size)
        if pixels.dtype != torch.uint8 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"expected uint8 pixels of shape (N, {', '.join(map(str, expected))}), "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        probs = [
            self.session.run(
                [OUTPUT_NAME],
                {INPUT_NAME: (normalize_intensity(chunk, self.intensity).float() / 255.0).numpy()},
            )[0]
            for chunk in pixels.split(batch_size)
        ]
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)
