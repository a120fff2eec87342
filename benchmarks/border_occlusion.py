"""Does a run rely on the image border? Score its validation split with the border blacked out.

    python benchmarks/border_occlusion.py RUN_DIR --data DATA_DIR [--bands 8 16 24]

Prints ROC AUC, specificity and sensitivity at the stored threshold for the clean images, for
images whose outer band of N pixels (at model resolution) is set to black, and for images where
only the outer 16 px are kept (centre black). A model that reads the chest loses little in the
first case and everything in the last. The band is blacked out after the run's intensity
normalisation, in the image the model sees (as the report's border occlusion).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pneumolab.data.dataset import decode_samples
from pneumolab.explain.occlusion import occluded_inputs
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.torch_scoring import predict_pixels
from pneumolab.run import RunDir


def _row(name: str, predictor: Predictor, normalised: torch.Tensor, labels: np.ndarray) -> str:
    probs = predict_pixels(predictor.require_model("border occlusion"), normalised)
    specificity = float((probs[labels == 0] < predictor.threshold).mean())
    sensitivity = float((probs[labels == 1] >= predictor.threshold).mean())
    return (
        f"| {name} | {roc_auc_score(labels, probs):.4f} | {specificity:.3f} | {sensitivity:.3f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--bands", type=int, nargs="+", default=[8, 16, 24])
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run_dir)
    samples = RunDir(args.run_dir).read_split(args.data.resolve(), "val")
    decoded = decode_samples(samples, predictor.image_size)
    pixels, labels = decoded.pixels, np.array([s.label for s in decoded.samples])
    print("| images | ROC AUC | specificity | sensitivity |\n|---|---|---|---|")
    clean, _, only = occluded_inputs(pixels, predictor.intensity, 16)
    print(_row("clean", predictor, clean, labels))
    for band in args.bands:
        black = occluded_inputs(pixels, predictor.intensity, band)[1]
        print(_row(f"outer {band} px black", predictor, black, labels))
    print(_row("only the outer 16 px kept", predictor, only, labels))


if __name__ == "__main__":
    main()
