"""What an evaluation writes: ``RUN_DIR/eval/<split>/`` (metrics.json, predictions.csv, the
figures, shift_predictions.csv after the shift protocol) and, for the test split, its line in
the held-out log."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pneumolab.evaluation.figures import (
    confusion_matrix_figure,
    decision_curve_figure,
    reliability_figure,
    roc_curve_figure,
    save_figure,
)
from pneumolab.evaluation.heldout import log_test_evaluation
from pneumolab.evaluation.scoring import Evaluation
from pneumolab.files import staged_files, write_text_atomically
from pneumolab.run import write_predictions, write_shift_predictions

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
SHIFT_PREDICTIONS = "shift_predictions.csv"

FIGURES = {
    "confusion_matrix.png": "confusion matrix",
    "roc_curve.png": "ROC curve (dot: stored threshold)",
    "reliability.png": "reliability diagram",
    "decision_curve.png": "decision curve (net benefit; dot: stored threshold)",
    "confusion_matrix_3class.png": "3x3 confusion matrix",
}
"""The figures an evaluation draws (file name -> caption); ROC and the decision curve need both
classes, the 3x3 matrix a three-class run."""

OWNED = {METRICS, PREDICTIONS, SHIFT_PREDICTIONS, *FIGURES}
"""The files an evaluation writes in ``eval/<split>/`` (a report's page there is not one)."""


def evaluation_figures(evaluation: Evaluation) -> dict[str, Figure]:
    """The evaluation's figures, by file name (see :data:`FIGURES`)."""
    metrics, labels, probs, title = (
        evaluation.metrics, evaluation.labels, evaluation.probs, evaluation.title,
    )  # fmt: skip
    drawn = {"confusion_matrix.png": confusion_matrix_figure(metrics.confusion_matrix, title)}
    if len(np.unique(labels)) == 2:
        point = (1 - metrics.specificity, metrics.sensitivity)
        drawn["roc_curve.png"] = roc_curve_figure(labels, probs, point, title)
        drawn["decision_curve.png"] = decision_curve_figure(labels, probs, metrics.threshold, title)
    curves = {"raw": probs} | evaluation.calibrated.curves
    drawn["reliability.png"] = reliability_figure(labels, curves, title)
    subtypes = metrics.subtypes
    if subtypes is not None:
        drawn["confusion_matrix_3class.png"] = confusion_matrix_figure(
            subtypes.confusion_matrix, title, subtypes.classes
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
        for name, figure in evaluation_figures(evaluation).items():
            save_figure(figure, staging / name)
        write_text_atomically(staging / METRICS, evaluation.metrics.to_json(indent=2) + "\n")
    record_look(evaluation)
    return out
