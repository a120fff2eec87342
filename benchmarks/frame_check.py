"""Framed images: how much of a chest X-ray does the frame check
(``pneumolab.scope.checks.frame_share``) find covered by uniform bands, on the shared X-rays, on
framed copies of them and on shifted ones?

    python benchmarks/frame_check.py --data ../shared/data [--size 160]

Every X-ray under ``--data`` (``*.jpeg`` / ``*.png``: the train/val copies and the
full-resolution originals), decoded and resized as ``predict`` does: quantiles of the frame
share, the widest band, the largest share of bright bands, and the share the check flags
(:func:`~pneumolab.scope.checks.frame_reason`).
Then every 5th training copy (``chest_xray/train``) framed before the resize, black and white,
bands of 5 / 10 / 20 / 30 % of the framed side on four sides or on two opposite sides
(``benchmarks/framed_images.py``'s frames; the 10 % frames also saved as JPEG quality 75),
and the same copies under each perturbation of
``evaluate --robustness`` and each shift-protocol scenario (draw 0): the share the check would
put out of scope. Nothing here looks at the test split.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from framed_images import framed
from PIL import Image
from polarity import xray_files_from_arguments

from pneumolab.data.imageio import load_image, resize_square
from pneumolab.evaluation.robustness import PERTURBATIONS
from pneumolab.evaluation.shift import SCENARIOS, apply_shift
from pneumolab.scope.checks import frame_bands, frame_reason, frame_share

QUANTILES = (0.5, 0.9, 0.99, 0.999, 1.0)
JPEG_QUALITY = 75


def _jpeg(image: Image.Image, size: int) -> np.ndarray:
    """``image`` saved as a JPEG, read back and resized as ``predict`` reads a file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "framed.jpeg"
        image.save(path, quality=JPEG_QUALITY)
        return resize_square(load_image(path, size_hint=size), size)


def _row(name: str, pixels: list[np.ndarray]) -> str:
    bands = [frame_bands(p) for p in pixels]
    shares = np.array([frame_share(b) for b in bands])
    bright = np.array([frame_share(b, bright=True) for b in bands])
    widest = max(band.share for b in bands for band in b)
    cells = " | ".join(f"{q:.3f}" for q in np.quantile(shares, QUANTILES))
    flagged = np.mean([frame_reason(b) is not None for b in bands])
    return (
        f"| {name} | {len(shares)} | {cells} | {widest:.3f} | {bright.max():.3f} | {flagged:.4f} |"
    )


def main() -> None:
    paths, size = xray_files_from_arguments(__doc__.splitlines()[0])
    images = [load_image(p, size_hint=size) for p in paths]
    pixels = [resize_square(image, size) for image in images]
    header = " | ".join(f"q{q:g}" for q in QUANTILES)
    lines = [
        f"| images | n | frame share {header} | widest band | bright frame share q1 | flagged |",
        "|---|---|" + "---|" * len(QUANTILES) + "---|---|---|",
        _row("X-rays", pixels),
    ]
    train = [i for i, path in enumerate(paths) if "chest_xray/train/" in str(path)][::5]
    sides = {"4 sides": (True, True), "top + bottom": (True, False), "left + right": (False, True)}
    for where, (rows, cols) in sides.items():
        for colour, value in (("black", 0), ("white", 255)):
            for width in (5, 10, 20, 30):
                frame = framed(width / 100, value, rows, cols)
                copies = [Image.fromarray(frame(np.asarray(images[i]))) for i in train]
                name = f"X-rays, {colour} frame {width} %, {where}"
                lines.append(_row(name, [resize_square(c, size) for c in copies]))
                if where == "4 sides" and width == 10:  # as an archive's JPEG
                    as_jpeg = [_jpeg(c, size) for c in copies]
                    lines.append(_row(f"{name}, as JPEG quality {JPEG_QUALITY}", as_jpeg))
    sample = torch.from_numpy(np.stack([pixels[i] for i in train]))[:, None]
    shifted = {f"perturbation {n}": f(sample) for n, f in PERTURBATIONS.items()}
    shifted |= {f"shift {n}": apply_shift(sample, s, 0) for n, s in SCENARIOS.items()}
    for name, batch in shifted.items():
        lines.append(_row(f"X-rays, {name}", [image[0].numpy() for image in batch]))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
