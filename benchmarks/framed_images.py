"""Framed images: does a uniform frame (padding, letterboxing) move a run's answers, and does
the scope gate see it?

    python benchmarks/framed_images.py RUN_DIR --data DATA_DIR [--widths 5 10 20 30]
        [--originals ../shared/data/chest_xray_fullres_sample]

Scores the run's validation split clean (each file as ``predict`` reads it), then each image
kept whole inside a uniform frame, black (0) and white (255), whose bands are N % of the framed
image's side: on all four sides (the chest shrunk to 100 - 2N % of each side), or on two
opposite sides only (top and bottom; left and right), a letterboxed, non-square file that
``predict`` squashes to square as it does every file. The frame is added to the decoded image at
its own resolution, as it would be part of an archive's file; the framed image then takes every
step of ``Predictor.predict``: resize, image checks, network, content score, gate. Prints ROC
AUC, specificity and sensitivity at the stored threshold, and the share put out of scope: by
the whole gate, by the gate as it was before the frame check (its other reasons, and the
polarity check, which is not judged on a framed image), by the frame check, by the content
score.

With ``--originals`` (a folder of ``NORMAL`` / ``PNEUMONIA`` originals of any shape: the
full-resolution sample), each original is also letterboxed to a square in black and in white
(bars on its two shorter-side edges, the original unshrunk). Those are training patients: read
their rows for the gate, not for accuracy.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolab.data.imageio import load_image
from pneumolab.data.layout import image_files
from pneumolab.inference.predictor import Predictor
from pneumolab.run import RunDir
from pneumolab.scope.checks import FRAME_REASON, MIN_POLARITY, polarity

POLARITY = "middle darker than its sides"
"""How the polarity check's reason begins."""
Frame = Callable[[np.ndarray], np.ndarray]
"""Makes the framed copy of one decoded uint8 ``(H, W)`` image."""


def framed(share: float, value: int, rows: bool = True, cols: bool = True) -> Frame:
    """Bands of ``share`` of the framed side on the top and bottom (``rows``) and the left and
    right (``cols``), of gray level ``value``."""

    def pad(side: int) -> int:
        return round(share * side / (1 - 2 * share))

    def frame(image: np.ndarray) -> np.ndarray:
        height, width = image.shape
        widths = ((pad(height),) * 2 if rows else (0, 0), (pad(width),) * 2 if cols else (0, 0))
        return np.pad(image, widths, constant_values=value)

    return frame


def letterboxed(value: int) -> Frame:
    """The image centred on a square of its longer side, bars of gray level ``value``."""

    def frame(image: np.ndarray) -> np.ndarray:
        height, width = image.shape
        side = max(height, width)
        top, left = (side - height) // 2, (side - width) // 2
        widths = ((top, side - height - top), (left, side - width - left))
        return np.pad(image, widths, constant_values=value)

    return frame


def _row(
    name: str, predictor: Predictor, inputs: Sequence[Path | np.ndarray], labels: np.ndarray
) -> str:
    """One table row: every input through the predictor's own steps, in batches."""
    probs, flags = [], []
    for start in range(0, len(inputs), 64):
        prepared = [predictor.prepare(item) for item in inputs[start : start + 64]]
        scores = predictor.scorer(np.stack([pixels for pixels, _ in prepared]))
        for index, (pixels, checks) in enumerate(prepared):
            result = predictor.result_for(
                name, scores.probability[index], scores.ood[index], checks
            )
            frame = any(r.startswith(FRAME_REASON) for r in result.reasons)
            # the gate before the frame check: its other reasons, and the polarity check on the
            # whole image (a framed image's is now judged inside the frame)
            others = [r for r in result.reasons if not r.startswith((FRAME_REASON, POLARITY))]
            before = bool(others) or polarity(pixels) < MIN_POLARITY
            probs.append(result.probability)
            flags.append(
                (not result.in_scope, before, frame, len(result.reasons) > len(checks.reasons))
            )
    p = np.array(probs)
    auc = roc_auc_score(labels, p) if len(set(labels)) == 2 else float("nan")
    specificity = float((p[labels == 0] < predictor.threshold).mean())
    sensitivity = float((p[labels == 1] >= predictor.threshold).mean())
    shares = " | ".join(f"{share:.3f}" for share in np.mean(flags, axis=0))
    return f"| {name} | {auc:.4f} | {specificity:.3f} | {sensitivity:.3f} | {shares} |"


HEADER = (
    "| images | ROC AUC | specificity | sensitivity | out of scope | before the frame check | "
    "frame check | content score |\n|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--widths", type=float, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--originals", type=Path)
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run_dir)
    samples = RunDir(args.run_dir).read_split(args.data.resolve(), "val")
    labels = np.array([s.label for s in samples])
    decoded = [np.asarray(load_image(s.path)) for s in samples]
    print(f"stored threshold {predictor.threshold:.3f}, {len(samples)} validation images\n")
    print(HEADER)
    print(_row("clean", predictor, [s.path for s in samples], labels))
    sides = {"4 sides": (True, True), "top + bottom": (True, False), "left + right": (False, True)}
    for where, (rows, cols) in sides.items():
        for colour, value in (("black", 0), ("white", 255)):
            for width in args.widths:
                frame = framed(width / 100, value, rows, cols)
                name = f"{colour} frame {width:g} %, {where}"
                print(_row(name, predictor, [frame(image) for image in decoded], labels))
    if args.originals:
        files = image_files(args.originals)
        truth = np.array([int("PNEUMONIA" in f.parts) for f in files])
        images = [np.asarray(load_image(f)) for f in files]
        print(f"\n{len(files)} originals under {args.originals}\n\n{HEADER}")
        print(_row("originals as they are", predictor, files, truth))
        for colour, value in (("black", 0), ("white", 255)):
            frame = letterboxed(value)
            name = f"originals letterboxed to square, {colour}"
            print(_row(name, predictor, [frame(image) for image in images], truth))


if __name__ == "__main__":
    main()
