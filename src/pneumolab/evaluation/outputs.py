"""What an evaluation writes: ``RUN_DIR/eval/<split>/`` (metrics.json, predictions.csv, the
figures, shift_predictions.csv after the shift protocol) and, for the test split, its line in
the held-out log."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pneumolab.evaluation.evaluate import Evaluation
from pneumolab.evaluation.figures import (
    save_confusion_matrix,
    save_reliability_diagram,
    save_roc_curve,
)
from pneumolab.evaluation.heldout import log_test_evaluation
from pneumolab.files import staged_files, write_text_atomically
from pneumolab.run import write_predictions, write_shift_predictions

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
SHIFT_PREDICTIONS = "shift_predictions.csv"

FIGURES = {
    "confusion_matrix.png": "confusion matrix",
    "roc_curve.png": "ROC curve (dot: stored threshold)",
    "reliability.png": "reliability diagram",
    "confusion_matrix_3class.png": "3x3 confusion matrix",
}
"""The figures an evaluation draws (file name -> caption); ROC needs both classes, the 3x3
matrix a three-class run."""

OWNED = {METRICS, PREDICTIONS, SHIFT_PREDICTIONS, *FIGURES}
"""The files an evaluation writes in ``eval/<split>/`` (a report's page there is not one)."""


def save_figures(evaluation: Evaluation, folder: Path) -> dict[str, Path]:
    """Draw the evaluation's figures into ``folder``: file name -> path of those drawn."""
    metrics, labels, probs, title = (
        evaluation.metrics, evaluation.labels, evaluation.probs, evaluation.title,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    drawn = {"confusion_matrix.png": folder / "confusion_matrix.png"}
    save_confusion_matrix(metrics["confusion_matrix"], drawn["confusion_matrix.png"], title)
    if len(np.unique(labels)) == 2:
        drawn["roc_curve.png"] = folder / "roc_curve.png"
        point = (1 - metrics["specificity"], metrics["sensitivity"])
        save_roc_curve(labels, probs, drawn["roc_curve.png"], point, title)
    drawn["reliability.png"] = folder / "reliability.png"
    scaled = {label: curve for label, curve, _ in evaluation.calibrated.values()}
    save_reliability_diagram(labels, {"raw": probs} | scaled, drawn["reliability.png"], title)
    if "subtypes" in metrics:
        drawn["confusion_matrix_3class.png"] = folder / "confusion_matrix_3class.png"
        subtypes = metrics["subtypes"]
        save_confusion_matrix(
            subtypes["confusion_matrix"],
            drawn["confusion_matrix_3class.png"],
            title,
            subtypes["classes"],
        )
    return drawn


def record_look(evaluation: Evaluation) -> None:
    """Log a look at the test split in the run's held-out log (other splits: nothing)."""
    if evaluation.split == "test":
        log_test_evaluation(evaluation.run)


def write_evaluation(evaluation: Evaluation) -> Path:
    """Write predictions.csv, after the shift protocol shift_predictions.csv, the figures and
    metrics.json into ``RUN_DIR/eval/<split>/`` as one set (:func:`staged_files`: metrics.json
    last, and an earlier evaluation's files this one did not make removed: a study's margins
    read shift_predictions.csv), then record a test-split look; the folder."""
    out = evaluation.run.eval_dir(evaluation.split)
    with staged_files(out, OWNED, last=METRICS) as staging:
        write_predictions(staging / PREDICTIONS, evaluation.decoded.samples, evaluation.probs)
        if evaluation.shifted is not None:
            write_shift_predictions(
                staging / SHIFT_PREDICTIONS, evaluation.decoded.samples, evaluation.shifted
            )
        save_figures(evaluation, staging)
        write_text_atomically(staging / METRICS, json.dumps(evaluation.metrics, indent=2) + "\n")
    record_look(evaluation)
    return out
