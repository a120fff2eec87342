"""Test-time augmentation under the shift protocol: does ``--tta`` help where the shift is?

    python benchmarks/tta_views.py RUN_DIR [RUN_DIR ...] --data DATA [--draws 2] [--out tta.md]

For each run, on its validation split: clean and every shift-protocol scenario (mean over
draws), scored as pneumolab scores them without and with ``tta`` (the mean probability over
:data:`pneumolab.data.transforms.TTA_VIEWS`: as is, zoom 1.1, rotations of ±5°). Plain scores
at the stored threshold; TTA scores at the stored threshold (chosen without TTA, as ``--tta``
used it until 2026-12-03) and at the run's TTA threshold (chosen on the clean TTA validation
scores by the run's own rule, as :func:`pneumolab.pipeline.finalise.finalise` now stores it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from report import publish, runs_parser

from pneumolab.data.dataset import decode_samples
from pneumolab.evaluation.decision import decision_rule
from pneumolab.evaluation.shift import scenario_results, shifted_probabilities
from pneumolab.inference.predictor import Predictor
from pneumolab.inference.scores import Scorer, with_tta
from pneumolab.inference.torch_scoring import Pixels
from pneumolab.run import RunDir

if TYPE_CHECKING:
    import torch

Figures = dict[str, tuple[float, float, float]]
"""``{scenario: (mean ROC AUC, mean specificity, mean sensitivity)}``, clean included."""


def scored(scorer: Scorer, pixels: torch.Tensor, draws: int) -> dict[str, list[np.ndarray]]:
    """Clean and shifted probabilities of ``scorer``, one array per draw."""

    def backend(images: Pixels) -> np.ndarray:
        return scorer(images).probability

    return {"clean": [backend(pixels)], **shifted_probabilities(backend, pixels, draws)}


def figures_at(
    probabilities: dict[str, list[np.ndarray]], labels: np.ndarray, threshold: float
) -> Figures:
    """Mean AUC, specificity and sensitivity of every scenario at ``threshold``."""
    figures: Figures = {}
    for result in scenario_results(probabilities, labels, threshold):
        summary = result.summary()
        figures[result.scenario] = (
            summary.mean_roc_auc,
            summary.mean_specificity,
            summary.mean_sensitivity,
        )
    return figures


def cell(figures: Figures, scenario: str) -> str:
    """``AUC / specificity / sensitivity``."""
    auc, specificity, sensitivity = figures[scenario]
    return f"{auc:.4f} / {specificity:.3f} / {sensitivity:.3f}"


def main() -> None:
    args = runs_parser(__doc__, draws=2).parse_args()
    lines = [
        "| run | scenario | plain, stored threshold | TTA, stored threshold | TTA, TTA threshold |",
        "|---|---|---|---|---|",
    ]
    for run in args.runs:
        predictor = Predictor.from_run(run)  # loaded and decoded once, scored both ways
        meta = predictor.meta
        decoded = decode_samples(RunDir(run).read_split(args.data, "val"), predictor.image_size)
        labels = np.array([s.label for s in decoded.samples])
        plain = scored(predictor.scorer, decoded.pixels, args.draws)
        tta = scored(with_tta(predictor.scorer), decoded.pixels, args.draws)
        target = meta.operating_points[meta.default_operating_point].params["target_sensitivity"]
        tta_threshold = decision_rule(labels, tta["clean"][0], run.name, target).threshold
        columns = [
            figures_at(plain, labels, meta.threshold),
            figures_at(tta, labels, meta.threshold),
            figures_at(tta, labels, tta_threshold),
        ]
        lines.append(
            f"| {run.name} | thresholds | {meta.threshold:.3f} | {meta.threshold:.3f} | "
            f"{tta_threshold:.3f} |"
        )
        lines += [
            f"| {run.name} | {s} | " + " | ".join(cell(c, s) for c in columns) + " |" for s in plain
        ]
    table = "\n".join(lines) + "\n"
    publish(table, args.out)


if __name__ == "__main__":
    main()
