"""Score uint8 X-ray pixels with an exported ONNX model in onnxruntime (PyTorch is not imported).

Loading never writes: the file comes from ``pneumolab export``
(:func:`pneumolab.serving.export.export_onnx`), which verifies it against PyTorch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from pneumolab.data.intensity import normalize_intensity_array
from pneumolab.errors import ModelError, RunDirError
from pneumolab.run import RunDir, weights_digest

if TYPE_CHECKING:
    import torch

INPUT_NAME = "pixels"
"""Graph input: float32 ``(N, 1, S, S)`` pixels in [0, 1], after intensity normalisation."""
OUTPUT_NAME = "probability"
"""Graph output: float32 ``(N,)`` pneumonia probabilities (the sigmoid is inside the graph)."""
REQUIRED_METADATA = ("image_size", "intensity")
"""What the backend needs; export writes more (see :func:`pneumolab.serving.export.export_onnx`)."""


class OnnxBackend:
    """An onnxruntime session plus the preprocessing contract stored in the model's metadata.

    Called with uint8 pixels ``(N, 1, S, S)`` (a NumPy array or a CPU tensor), exactly what
    :class:`~pneumolab.Predictor` prepares, it applies the run's intensity normalisation (which
    lives outside the graph, in NumPy), scales to [0, 1] and returns probabilities ``(N,)``,
    like the PyTorch backend. ``options`` tune the session (default: :func:`session_options`).
    """

    def __init__(self, onnx_file: str | Path, options: ort.SessionOptions | None = None) -> None:
        self.file = Path(onnx_file)
        if not self.file.is_file():
            raise ModelError(f"{self.file}: ONNX file not found")
        try:
            self.session = ort.InferenceSession(
                str(self.file),
                sess_options=options or session_options(),
                providers=ort.get_available_providers(),
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

    def __call__(self, pixels: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """Pneumonia probabilities for uint8 ``(N, 1, S, S)`` pixels, batch by batch."""
        pixels = np.asarray(pixels)
        expected = (1, self.image_size, self.image_size)
        if pixels.dtype != np.uint8 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"expected uint8 pixels of shape (N, {', '.join(map(str, expected))}), "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        probs = [
            self.session.run(
                [OUTPUT_NAME],
                {INPUT_NAME: normalize_intensity_array(chunk, self.intensity) / np.float32(255)},
            )[0]
            for chunk in np.split(pixels, range(batch_size, len(pixels), batch_size))
        ]
        return np.concatenate(probs) if probs else np.zeros(0, dtype=np.float32)


def session_options(threads: int | None = None, spin: bool = True) -> ort.SessionOptions:
    """onnxruntime settings for this CPU inference: every graph optimisation, operators run one
    after another (the network is a chain), ``threads`` intra-op threads (None: one per core),
    ``spin=False`` so idle intra-op threads yield the cores to image decoding threads."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def run_onnx_backend(run_dir: str | Path, onnx_file: str | Path | None = None) -> OnnxBackend:
    """The ONNX backend of a run from ``onnx_file`` (default ``RUN_DIR/model.onnx``); a clear
    error when the file is missing or was exported from other weights. Writes nothing."""
    run = RunDir(Path(run_dir))
    onnx_file = Path(onnx_file) if onnx_file else run.onnx
    if not onnx_file.is_file():
        raise RunDirError(
            f"{onnx_file}: no ONNX export of this run; create it with "
            f"`pneumolab export {run.root}` (verified against PyTorch), then use --backend onnx"
        )
    backend = OnnxBackend(onnx_file)
    if backend.metadata.get("weights_sha256") != weights_digest(run.root):
        raise RunDirError(
            f"{onnx_file}: exported from other weights than {run.weights}; "
            f"run `pneumolab export {run.root}` again"
        )
    return backend
