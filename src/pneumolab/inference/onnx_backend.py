"""Score uint8 X-ray pixels with an exported ONNX model in onnxruntime (PyTorch is not imported).

Loading never writes: the file comes from ``pneumolab export``
(:func:`pneumolab.serving.export.export_onnx`), which verifies it against PyTorch.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumolab.data.intensity import normalize_intensity_array
from pneumolab.errors import ModelError, RunDirError
from pneumolab.inference.scores import Scores
from pneumolab.run import RunDir, ood_digest, weights_digest

if TYPE_CHECKING:
    import onnxruntime as ort
    import torch

INPUT_NAME = "pixels"
"""Graph input: float32 ``(N, 1, S, S)`` pixels in [0, 1], after intensity normalisation."""
OUTPUT_NAME = "probability"
"""Graph output: float32 ``(N,)`` pneumonia probabilities (the sigmoid is inside the graph)."""
OOD_OUTPUT_NAME = "ood_score"
"""Second graph output (exports since the input-scope gate): float32 ``(N,)`` OOD scores
(:mod:`pneumolab.scope.ood`; NaN for a run without an OOD model), from the same forward pass."""
INT8_FILE_NAME = "model.int8.onnx"
"""Where ``pneumolab export --format onnx-int8`` writes by default (in the run directory)."""
REQUIRED_METADATA = ("image_size", "intensity")
"""What the backend needs; export writes more (see :func:`pneumolab.serving.export.export_onnx`)."""


class ExportedBackend:
    """An exported model plus the preprocessing contract stored in its metadata.

    Called with uint8 pixels ``(N, 1, S, S)`` (a NumPy array or a CPU tensor), exactly what
    :class:`~pneumolab.Predictor` prepares, it applies the run's intensity normalisation (which
    lives outside the graph, in NumPy), scales to [0, 1] and returns probabilities and OOD scores
    ``(N,)`` (NaN when the file has no ``ood_score`` output), like the PyTorch backend.
    Subclasses load the file and score float32 batches (``_score``: the probabilities, then the
    OOD scores where the file has them).
    """

    file: Path
    metadata: dict[str, str]

    def _read_contract(self, metadata: dict[str, str]) -> None:
        self.metadata = metadata
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise ModelError(
                f"{self.file}: no pneumolab preprocessing metadata ({', '.join(missing)} missing); "
                "export it with `pneumolab export`"
            )
        self.image_size = int(metadata["image_size"])
        self.intensity = metadata["intensity"]

    def _score(self, inputs: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def __call__(self, pixels: np.ndarray | torch.Tensor, batch_size: int = 64) -> Scores:
        """Probabilities and OOD scores for uint8 ``(N, 1, S, S)`` pixels, batch by batch."""
        pixels = np.asarray(pixels)
        expected = (1, self.image_size, self.image_size)
        if pixels.dtype != np.uint8 or tuple(pixels.shape[1:]) != expected:
            raise ValueError(
                f"expected uint8 pixels of shape (N, {', '.join(map(str, expected))}), "
                f"got {pixels.dtype} {tuple(pixels.shape)}"
            )
        probs, oods = [], []
        for chunk in np.split(pixels, range(batch_size, len(pixels), batch_size)):
            inputs = normalize_intensity_array(chunk, self.intensity) / np.float32(255)
            probability, *ood = self._score(inputs)
            probs.append(probability)
            oods.append(ood[0] if ood else np.full_like(probability, np.nan))
        if not probs:
            return Scores(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))
        return Scores(np.concatenate(probs), np.concatenate(oods))

    def check_run(self, run_dir: Path, export_command: str) -> None:
        """RunDirError unless this file was exported from ``run_dir``'s weights and its current
        OOD model (``export_command`` writes it again, over the stale file)."""
        run = RunDir(run_dir)
        if self.metadata.get("weights_sha256") != weights_digest(run.root):
            raise RunDirError(
                f"{self.file}: exported from other weights than {run.weights}; "
                f"run `{export_command}`"
            )
        if self.metadata.get("ood_sha256", "none") != ood_digest(run.root):
            raise RunDirError(
                f"{self.file}: exported before the run's OOD model {run.ood} was (re)fitted, so "
                f"its ood_score output is missing or stale; run `{export_command}`"
            )


def import_runtime(module: str, needed: str, install: str) -> Any:
    """The runtime ``module`` an exported backend runs on, or a ModelError: what ``needed`` it,
    that it cannot be imported (missing, or a broken install: the exported backends ended in a
    traceback) and how to ``install`` it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(f"{needed}, which cannot be imported here ({exc}): {install}") from None


def import_onnxruntime() -> Any:
    """The ``onnxruntime`` module (:func:`import_runtime`)."""
    return import_runtime(
        "onnxruntime", "the onnx and openvino backends need onnxruntime", "pip install onnxruntime"
    )


class OnnxBackend(ExportedBackend):
    """An onnxruntime session of an exported ONNX file (fp32, or INT8 from
    :mod:`pneumolab.serving.accelerate`); ``options`` tune it (default: :func:`session_options`)."""

    def __init__(self, onnx_file: str | Path, options: ort.SessionOptions | None = None) -> None:
        self.file = Path(onnx_file)
        if not self.file.is_file():
            raise ModelError(f"{self.file}: ONNX file not found")
        ort = import_onnxruntime()
        try:
            self.session = ort.InferenceSession(
                str(self.file),
                sess_options=options or session_options(),
                providers=ort.get_available_providers(),
            )
        except Exception as exc:  # onnxruntime's errors share no base class below Exception
            raise ModelError(f"{self.file}: not a loadable ONNX model ({exc})") from None
        self._read_contract(dict(self.session.get_modelmeta().custom_metadata_map))
        names = [output.name for output in self.session.get_outputs()]
        self.outputs = [name for name in (OUTPUT_NAME, OOD_OUTPUT_NAME) if name in names]

    def _score(self, inputs: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(self.outputs, {INPUT_NAME: inputs}))


def session_options(threads: int | None = None, spin: bool = False) -> ort.SessionOptions:
    """onnxruntime settings for CPU inference: every graph optimisation, operators one after
    another (the network is a chain), ``threads`` intra-op threads (None: one per core) that
    do not spin while idle (``spin=False``), so they leave the cores to the image decoding
    threads and to other processes (benchmarks/speed.py measures the variants).
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = threads or 0
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


def load_onnx_backend(run_dir: str | Path, onnx_file: str | Path | None = None) -> OnnxBackend:
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
    backend.check_run(run.root, f"pneumolab export {run.root} --overwrite")
    return backend
