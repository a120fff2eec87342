"""Clinical metrics of a binary classifier at a decision threshold (positive class = pneumonia)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, object]:
    """Accuracy, sensitivity (recall), specificity, precision (PPV), NPV, F1, ROC AUC at ``threshold``.

    A case is called positive when ``prob >= threshold``. Undefined ratios are NaN (ROC AUC is
    NaN when only one class is present). ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]``.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    y_pred = (prob >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    sensitivity = _ratio(tp, tp + fn)
    precision = _ratio(tp, tp + fp)
    both_classes = len(np.unique(y_true)) == 2
    return {
        "n": len(y_true),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y_true)),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "roc_auc": float(roc_auc_score(y_true, prob)) if both_classes else float("nan"),
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }
