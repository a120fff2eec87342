"""Multi-view test-time augmentation: does averaging reframed views help under the shift protocol?

    python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] --data DATA [--draws 2] [--out tta.md]

For each run, on its validation split: clean and every shift-protocol scenario (mean over draws),
scored once by the run's backend and once as the mean probability over three views of each
image: as it is, zoomed out to 88% inside a black border, and the central 90% enlarged. The
plain scores use the stored threshold; the view average gets its own threshold, chosen on its
clean validation scores at ``--target-sensitivity`` (default 0.95, the runs' own rule), since
averaging moves the scores.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pneumolab.data.dataset import decode_samples
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.shift import shift_protocol
from pneumolab.evaluation.thresholds import threshold_for_sensitivity
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir

Score = Callable[[torch.Tensor], np.ndarray]


def _resize(pixels: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(pixels.float(), size=(side, side), mode="bilinear", antialias=True)


def zoom_out(pixels: torch.Tensor, scale: float = 0.88) -> torch.Tensor:
    """The whole image, smaller, centred in a black square of the same size."""
    size = pixels.shape[-1]
    side = round(size * scale)
    start = (size - side) // 2
    out = torch.zeros_like(pixels)
    out[..., start : start + side, start : start + side] = (
        _resize(pixels, side).round().clamp(0, 255).to(pixels.dtype)
    )
    return out


def zoom_in(pixels: torch.Tensor, keep: float = 0.9) -> torch.Tensor:
    """The central ``keep`` of the image, enlarged to the full size."""
    size = pixels.shape[-1]
    side = round(size * keep)
    start = (size - side) // 2
    crop = pixels[..., start : start + side, start : start + side]
    return _resize(crop, size).round().clamp(0, 255).to(pixels.dtype)


def with_views(score: Score) -> Score:
    """The mean probability over the image, :func:`zoom_out` and :func:`zoom_in`."""
    return lambda pixels: np.mean(
        [score(v) for v in (pixels, zoom_out(pixels), zoom_in(pixels))], axis=0
    )


def rows_for(run_dir: Path, data: Path, draws: int, target: float) -> list[str]:
    """Markdown rows: each scenario, plain vs views (ROC AUC, specificity)."""
    predictor = Predictor.from_run(run_dir)
    decoded = decode_samples(RunDir(run_dir).read_split(data, "val"), predictor.image_size)
    labels = np.array([s.label for s in decoded.samples])
    figures: dict[str, dict[str, tuple[float, float]]] = {}
    for name, score in (("plain", predictor.backend), ("views", with_views(predictor.backend))):
        clean = score(decoded.pixels)
        threshold = (
            predictor.threshold
            if name == "plain"
            else threshold_for_sensitivity(labels, clean, target)
        )
        metrics = binary_metrics(labels, clean, threshold)
        figures.setdefault("clean", {})[name] = (metrics.roc_auc, metrics.specificity)
        for result in shift_protocol(score, decoded.pixels, labels, threshold, draws):
            summary = result.summary()
            figures.setdefault(result.scenario, {})[name] = (
                summary["mean_roc_auc"],
                summary["mean_specificity"],
            )
    return [
        f"| {run_dir.name} | {scenario} | {p[0]:.4f} / {p[1]:.3f} | {v[0]:.4f} / {v[1]:.3f} |"
        for scenario, both in figures.items()
        for p, v in [(both["plain"], both["views"])]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--target-sensitivity", type=float, default=0.95)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [
        "| run | scenario | plain: AUC / specificity | 3 views: AUC / specificity |",
        "|---|---|---|---|",
    ]
    for run in args.runs:
        lines += rows_for(run, args.data, args.draws, args.target_sensitivity)
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
