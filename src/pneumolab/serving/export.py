"""Export a run's classifier to ONNX, with its preprocessing contract, verified against PyTorch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

import pneumolab
from pneumolab.errors import ExportError
from pneumolab.inference.onnx_backend import INPUT_NAME, OUTPUT_NAME, OnnxBackend
from pneumolab.inference.predictor import Predictor, predict_pixels
from pneumolab.run import RunDir, read_predictions, weights_digest

TOLERANCE = 1e-4
"""Largest |probability difference| between onnxruntime and PyTorch that passes verification."""
MAX_VERIFY_IMAGES = 32


class _ProbabilityModel(nn.Module):
    """The classifier followed by a sigmoid, so the graph outputs probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(pixels))


def _metadata(run_dir: Path, predictor: Predictor) -> dict[str, str]:
    """The preprocessing contract and provenance, as ONNX ``metadata_props`` (strings)."""
    model = predictor.require_model("ONNX export")
    return {
        "image_size": str(predictor.image_size),
        "intensity": predictor.intensity,
        "intensity_applied": "outside the graph, on the uint8 (N,1,S,S) pixels before / 255: "
        "pneumolab.data.transforms.normalize_intensity",
        "input": f"{INPUT_NAME}: float32 (N,1,S,S) = grayscale uint8, resized to SxS "
        "(bilinear, aspect ratio not kept), / 255",
        "output": f"{OUTPUT_NAME}: float32 (N,) probability of class_names[1]",
        "mean": json.dumps(model.mean.flatten().tolist()),
        "std": json.dumps(model.std.flatten().tolist()),
        "mean_std_applied": "inside the graph",
        "threshold": repr(predictor.threshold),
        "class_names": json.dumps(list(predictor.class_names)),
        "model": predictor.meta.model,
        "pneumolab_version": pneumolab.__version__,
        "weights_sha256": weights_digest(run_dir),
    }


def _verification_pixels(
    predictor: Predictor, run: RunDir, images: Sequence[Path] | None
) -> tuple[torch.Tensor, str]:
    """Pixels to compare the backends on, and where they came from."""
    if images is None and run.val_predictions.is_file():
        rows = read_predictions(run.val_predictions)
        found = [p for p in (Path(row["path"]) for row in rows) if p.is_file()]
        if found:  # spread over the file, which lists one class after the other
            picks = np.linspace(0, len(found) - 1, MAX_VERIFY_IMAGES).round().astype(int)
            paths = [found[i] for i in np.unique(picks)]
            return torch.stack([predictor.preprocess(p) for p in paths]), "validation images"
    if images:
        return torch.stack([predictor.preprocess(p) for p in images]), "images"
    size = predictor.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (8, 1, size, size), dtype=torch.uint8, generator=generator)
    return pixels, "random images (no validation images found)"


def export_onnx(
    run_dir: str | Path,
    out_file: str | Path,
    verify_images: Sequence[Path] | None = None,
    opset: int = 17,
) -> dict[str, Any]:
    """Export the run's model to ONNX (dynamic batch, probabilities out, metadata) and verify it.

    Verification scores ``verify_images`` (default: up to 32 of the run's validation images,
    else random pixels) with onnxruntime and PyTorch; the file is written only when the largest
    probability difference is at most ``TOLERANCE``, else ExportError. Labels at the stored
    threshold must agree, except for an image that PyTorch scores within ``TOLERANCE`` of the
    threshold (which is itself a validation score); such flips are reported.
    """
    run, out_file = RunDir(Path(run_dir)), Path(out_file)
    predictor = Predictor.from_run(run.root)
    model = predictor.require_model("ONNX export")
    size = predictor.image_size
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(out_file.name + ".partial")
    try:
        torch.onnx.export(
            _ProbabilityModel(model).eval(),  # eval(): export restores this mode
            (torch.rand(2, 1, size, size),),
            str(tmp),
            dynamo=False,  # the TorchScript exporter: no onnxscript dependency, exact here
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=opset,
        )
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, _metadata(run.root, predictor))
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
        pixels, source = _verification_pixels(predictor, run, verify_images)
        expected = predict_pixels(model, pixels, predictor.intensity)
        got = OnnxBackend(tmp)(pixels)
        max_diff = float(np.abs(got - expected).max())
        flipped = (got >= predictor.threshold) != (expected >= predictor.threshold)
        flips = int(flipped.sum())
        # a flip is only acceptable for an image that PyTorch itself scores within TOLERANCE of
        # the threshold (the threshold is a validation score, so one image sits exactly on it)
        unexplained = int((flipped & (np.abs(expected - predictor.threshold) > TOLERANCE)).sum())
        if max_diff > TOLERANCE or unexplained:
            raise ExportError(
                f"{out_file}: onnxruntime differs from PyTorch by up to {max_diff:.2e} "
                f"(tolerance {TOLERANCE:.0e}) on {len(pixels)} {source}; {flips} label(s) "
                f"differ at the stored threshold ({unexplained} not on the threshold); "
                "file not written"
            )
        tmp.replace(out_file)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "file": str(out_file),
        "opset": opset,
        "verified_on": f"{len(pixels)} {source}",
        "max_abs_diff": max_diff,
        "labels_identical": flips == 0,
        "label_flips": flips,
        "tolerance": TOLERANCE,
    }
