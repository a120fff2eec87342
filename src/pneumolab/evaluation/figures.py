"""Figures of an evaluation: confusion matrix and ROC curve (matplotlib, written as PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay, RocCurveDisplay

from pneumolab.data.layout import CLASS_NAMES


def save_confusion_matrix(matrix: list[list[int]], path: Path, title: str = "") -> Path:
    """Plot ``[[tn, fp], [fn, tp]]`` with class names on the axes."""
    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=CLASS_NAMES).plot(
        ax=ax, cmap="Blues", colorbar=False, values_format="d"
    )
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_roc_curve(
    y_true: np.ndarray,
    prob: np.ndarray,
    path: Path,
    operating_point: tuple[float, float] | None = None,
    title: str = "",
) -> Path:
    """ROC curve with its AUC; ``operating_point`` = (1 - specificity, sensitivity) is marked."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    RocCurveDisplay.from_predictions(y_true, prob, ax=ax, name="model", plot_chance_level=True)
    if operating_point is not None:
        ax.plot(*operating_point, "o", color="crimson", label="stored threshold")
        ax.legend(loc="lower right")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
