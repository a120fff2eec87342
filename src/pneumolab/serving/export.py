"""Export a run's classifier to ONNX, with its preprocessing contract, verified against PyTorch."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

import pneumolab
from pneumolab.choices import DEFAULT_OPSET, ONNX_OPSETS
from pneumolab.data.intensity import RECIPES as INTENSITY_RECIPES
from pneumolab.errors import ExportError
from pneumolab.evaluation.metrics import called_positive
from pneumolab.files import write_atomically
from pneumolab.inference.onnx_backend import INPUT_NAME, OOD_OUTPUT_NAME, OUTPUT_NAME, OnnxBackend
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import torch_scorer
from pneumolab.models.scored import ScoredModel
from pneumolab.outputs import check_output, check_suffix
from pneumolab.run import RunDir, ood_digest, read_predictions, weights_digest

TOLERANCE = 1e-4
"""Largest |probability difference| between onnxruntime and PyTorch that passes verification."""
OOD_RELATIVE_TOLERANCE = 1e-3
"""Largest relative OOD-score difference between onnxruntime and PyTorch that passes."""
MAX_VERIFY_IMAGES = 32


def _metadata(run_dir: Path, predictor: Predictor) -> dict[str, str]:
    """The preprocessing contract and provenance, as ONNX ``metadata_props`` (strings)."""
    model = predictor.require_model("ONNX export")
    return {
        "image_size": str(predictor.image_size),
        "intensity": predictor.intensity,
        "intensity_applied": "outside the graph, on the uint8 (N,1,S,S) pixels after the resize, "
        f"before / 255: {INTENSITY_RECIPES[predictor.intensity]} "
        "(pneumolab.data.intensity.normalize_intensity_array)",
        "input": f"{INPUT_NAME}: float32 (N,1,S,S) = grayscale uint8, resized to SxS "
        "(bilinear, aspect ratio not kept), / 255",
        "output": f"{OUTPUT_NAME}: float32 (N,) probability of class_names[1]; "
        f"{OOD_OUTPUT_NAME}: float32 (N,) OOD score (NaN without an OOD model), out of scope "
        "above ood_threshold",
        "ood_method": predictor.ood.method if predictor.ood else "none",
        "ood_threshold": repr(predictor.ood.threshold) if predictor.ood else "none",
        "ood_sha256": ood_digest(run_dir),
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
        found = [p for p in (Path(row.path) for row in rows) if p.is_file()]
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


@dataclass(frozen=True)
class OnnxExport:
    """An exported file and its verification against PyTorch."""

    file: Path
    opset: int
    verified_on: str
    """How many images of which kind were scored by both (``32 validation images``)."""
    max_abs_diff: float
    labels_identical: bool
    label_flips: int
    """Labels that differ at the stored threshold (each scored within ``tolerance`` of it)."""
    tolerance: float
    ood_score_output: bool
    """Whether the graph also outputs the OOD score (the run has an OOD model)."""

    def summary(self) -> str:
        """The verification in one line."""
        labels = (
            "identical"
            if self.labels_identical
            else f"{self.label_flips} differ (scores within {self.tolerance:.0e} of it)"
        )
        return (
            f"verified on {self.verified_on}: max |Δprob| vs PyTorch {self.max_abs_diff:.1e}, "
            f"labels at the threshold: {labels}"
        )


def _verify(
    predictor: Predictor, onnx_file: Path, pixels: torch.Tensor, source: str, out_file: Path
) -> dict[str, Any]:
    """Compare onnxruntime with PyTorch on ``pixels``; ExportError when they disagree."""
    model = predictor.require_model("ONNX export")
    ood = predictor.ood.scorer if predictor.ood else None
    expected = torch_scorer(model, predictor.intensity, ood)(pixels)
    got = OnnxBackend(onnx_file)(np.asarray(pixels))
    max_diff = float(np.abs(got.probability - expected.probability).max())
    flipped = called_positive(got.probability, predictor.threshold) != called_positive(
        expected.probability, predictor.threshold
    )
    flips = int(flipped.sum())
    # a flip is only acceptable for an image that PyTorch itself scores within TOLERANCE of
    # the threshold (the threshold is a validation score, so one image sits exactly on it)
    near = np.abs(expected.probability - predictor.threshold) <= TOLERANCE
    unexplained = int((flipped & ~near).sum())
    ood_ok = np.allclose(got.ood, expected.ood, rtol=OOD_RELATIVE_TOLERANCE, equal_nan=True)
    if max_diff > TOLERANCE or unexplained or not ood_ok:
        raise ExportError(
            f"{out_file}: onnxruntime differs from PyTorch by up to {max_diff:.2e} "
            f"(tolerance {TOLERANCE:.0e}) on {len(pixels)} {source}; {flips} label(s) "
            f"differ at the stored threshold ({unexplained} not on the threshold); OOD scores "
            f"{'agree' if ood_ok else 'differ'} (relative tolerance "
            f"{OOD_RELATIVE_TOLERANCE:.0e}); file not written"
        )
    return {
        "verified_on": f"{len(pixels)} {source}",
        "max_abs_diff": max_diff,
        "labels_identical": flips == 0,
        "label_flips": flips,
        "tolerance": TOLERANCE,
        "ood_score_output": ood is not None,
    }


def export_onnx(
    run_dir: str | Path,
    out_file: str | Path | None = None,
    verify_images: Sequence[Path] | None = None,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> OnnxExport:
    """Export the run's model to ONNX (dynamic batch; probabilities and OOD scores out, from one
    pass; metadata) into ``out_file`` (default ``RUN_DIR/model.onnx``) and verify it.

    Verification scores ``verify_images`` (default: up to 32 of the run's validation images,
    else random pixels) with onnxruntime and PyTorch; the file is written only when the largest
    probability difference is at most ``TOLERANCE`` and the OOD scores agree, else ExportError.
    Labels at the stored threshold must agree, except for an image that PyTorch scores within
    ``TOLERANCE`` of the threshold (which is itself a validation score); such flips are reported.
    An existing ``out_file`` is replaced only with ``overwrite``; a run's own files never are.
    """
    if opset not in ONNX_OPSETS:
        raise ValueError(
            f"opset {opset}: pneumolab exports opsets {ONNX_OPSETS.start}-{ONNX_OPSETS.stop - 1} "
            "(below 11 PyTorch cannot keep the batch axis dynamic)"
        )
    run = RunDir(Path(run_dir))
    out_file = check_output(out_file or run.onnx, overwrite)
    check_suffix(out_file, ".onnx", "an ONNX model is an .onnx file")
    predictor = Predictor.from_run(run.root)
    model = predictor.require_model("ONNX export")
    size = predictor.image_size
    outputs = [OUTPUT_NAME, OOD_OUTPUT_NAME]
    report: dict[str, Any] = {}

    def export_and_verify(partial: Path) -> None:
        with warnings.catch_warnings():
            # pneumonia_logit branches on the head's width, fixed per model, so tracing one
            # branch is right; only that module's warning is silenced (a data-dependent branch
            # anywhere else still warns), and the file is verified against PyTorch below
            warnings.filterwarnings(
                "ignore",
                "Converting a tensor to a Python boolean",
                torch.jit.TracerWarning,
                module=r"pneumolab\.models\.classifier$",
            )
            torch.onnx.export(
                ScoredModel(model, predictor.ood.scorer if predictor.ood else None).eval(),
                (torch.rand(2, 1, size, size),),
                str(partial),
                dynamo=False,  # the TorchScript exporter: no onnxscript dependency, exact here
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes={name: {0: "batch"} for name in [INPUT_NAME, *outputs]},
                opset_version=opset,
            )
        graph = onnx.load(str(partial))
        onnx.helper.set_model_props(graph, _metadata(run.root, predictor))
        onnx.checker.check_model(graph)
        onnx.save(graph, str(partial))
        pixels, source = _verification_pixels(predictor, run, verify_images)
        report.update(_verify(predictor, partial, pixels, source, out_file))

    write_atomically(out_file, export_and_verify, replace=overwrite)  # only once verified
    return OnnxExport(file=out_file, opset=opset, **report)


def export_missing(run_dirs: Iterable[str | Path]) -> dict[Path, OnnxExport]:
    """Export every network of ``run_dirs`` (each member of an ensemble) whose ``model.onnx`` is
    missing, verified as :func:`export_onnx` does, each once (a run given beside an ensemble it
    is a member of, or two ensembles sharing one); returns each file written with its report."""
    missing = {
        single.root.resolve(): single
        for run_dir in run_dirs
        for single in RunDir(Path(run_dir)).missing_onnx()
    }
    return {single.onnx: export_onnx(single.root, single.onnx) for single in missing.values()}
