"""Test-time augmentation under the shift protocol: does ``--tta`` help where the shift is?

    python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] --data DATA [--draws 2] [--out tta.md]

For each run, on its validation split: clean and every shift-protocol scenario (mean over
draws), scored as pneumolab scores them without and with ``tta`` (the mean probability over
:data:`pneumolab.data.transforms.TTA_VIEWS`: as is, zoom 1.1, rotations of ±5°), both at the
stored threshold, which was chosen without TTA, as ``predict --tta`` and ``evaluate --tta`` use it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pneumolab.data.dataset import decode_samples
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.shift import shift_protocol
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import Scorer, with_tta
from pneumolab.run import RunDir


def figures_for(
    scorer: Scorer, pixels: np.ndarray, labels: np.ndarray, threshold: float, draws: int
) -> dict[str, tuple[float, float]]:
    """``{scenario: (mean ROC AUC, mean specificity)}``, clean included."""

    def backend(images: np.ndarray) -> np.ndarray:
        return scorer(images).probability

    clean = binary_metrics(labels, backend(pixels), threshold)
    figures = {"clean": (clean.roc_auc, clean.specificity)}
    for result in shift_protocol(backend, pixels, labels, threshold, draws):
        summary = result.summary()
        figures[result.scenario] = (summary["mean_roc_auc"], summary["mean_specificity"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--draws", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    lines = [
        "| run | scenario | plain: AUC / specificity | TTA: AUC / specificity |",
        "|---|---|---|---|",
    ]
    for run in args.runs:
        predictor = Predictor.from_run(run)  # loaded and decoded once, scored both ways
        decoded = decode_samples(RunDir(run).read_split(args.data, "val"), predictor.image_size)
        labels = np.array([s.label for s in decoded.samples])
        plain, tta = (
            figures_for(scorer, decoded.pixels, labels, predictor.threshold, args.draws)
            for scorer in (predictor.scorer, with_tta(predictor.scorer))
        )
        lines += [
            f"| {run.name} | {s} | {plain[s][0]:.4f} / {plain[s][1]:.3f} | "
            f"{tta[s][0]:.4f} / {tta[s][1]:.3f} |"
            for s in plain
        ]
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
