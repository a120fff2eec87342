"""Inverted images: does the polarity check (``pneumolab.scope.checks.polarity``) separate chest
X-rays from their negatives, and does it leave shifted X-rays in scope?

    python benchmarks/polarity.py --data ../shared/data [--size 160]

Every X-ray under ``--data`` (``*.jpeg`` / ``*.png``: the train/val copies and the
full-resolution originals), decoded and resized as ``predict`` does, and its negative
(255 - pixels): quantiles of the polarity score and the share below
:data:`~pneumolab.scope.checks.MIN_POLARITY`. Then the validation copies under each perturbation
of ``evaluate --robustness`` and each shift-protocol scenario (draw 0), on every 5th training
copy (``chest_xray/train``): the share the check would put out of scope. Nothing here looks at
the test split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from pneumolab.data.imageio import load_image, resize_square
from pneumolab.evaluation.robustness import PERTURBATIONS
from pneumolab.evaluation.shift import SCENARIOS, apply_shift
from pneumolab.scope.checks import MIN_POLARITY, polarity

QUANTILES = (0.0, 0.001, 0.01, 0.5)


def _row(name: str, scores: np.ndarray) -> str:
    cells = " | ".join(f"{q:.3f}" for q in np.quantile(scores, QUANTILES))
    return f"| {name} | {len(scores)} | {cells} | {np.mean(scores < MIN_POLARITY):.4f} |"


def xray_files_from_arguments(description: str) -> tuple[list[Path], int]:
    """The ``--data`` folder's X-ray files (``*.jpeg`` / ``*.png``, sorted) and ``--size``,
    from the command line of a script that measures a scope check on the shared X-rays."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--size", type=int, default=160)
    args = parser.parse_args()
    paths = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in {".jpeg", ".png"})
    return paths, args.size


def main() -> None:
    paths, size = xray_files_from_arguments(__doc__.splitlines()[0])
    pixels = [resize_square(load_image(p, size_hint=size), size) for p in paths]
    originals = np.array([polarity(p) for p in pixels])
    negatives = np.array([polarity(255 - p) for p in pixels])
    header = " | ".join(f"q{q:g}" for q in QUANTILES)
    lines = [
        f"| images | n | {header} | share below {MIN_POLARITY:g} |",
        "|---|---|" + "---|" * len(QUANTILES) + "---|",
        _row("X-rays", originals),
        _row("their negatives", negatives),
    ]
    train = [p for p, path in zip(pixels, paths, strict=True) if "chest_xray/train/" in str(path)]
    sample = torch.from_numpy(np.stack(train[::5]))[:, None]
    shifted = {f"perturbation {n}": f(sample) for n, f in PERTURBATIONS.items()}
    shifted |= {f"shift {n}": apply_shift(sample, s, 0) for n, s in SCENARIOS.items()}
    for name, images in shifted.items():
        lines.append(_row(f"X-rays, {name}", np.array([polarity(i[0].numpy()) for i in images])))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
