"""Three-class (NORMAL / BACTERIAL / VIRAL) metrics: per class, confusion, bacterial vs viral."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix, roc_auc_score

from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_calls
from pneumolab.results import ClassMetrics, SubtypeMetrics


def subtype_metrics(
    true: np.ndarray, class_probs: np.ndarray, pneumonia: np.ndarray
) -> SubtypeMetrics:
    """Per-class precision / recall / F1 / support, the 3x3 confusion matrix (rows: truth),
    accuracy, macro one-vs-rest ROC AUC, and the accuracy of bacterial vs viral among the true
    pneumonia cases (the original paper's 90.7% figure compares to this), of
    :func:`subtype_calls` on the binary decision ``pneumonia`` (the argmax of the three
    probabilities ignored the threshold, and its NORMAL row contradicted the binary confusion
    matrix beside it)."""
    true = np.asarray(true, dtype=int)
    predicted = subtype_calls(class_probs, np.asarray(pneumonia, dtype=bool))
    labels = list(range(len(SUBTYPE_NAMES)))
    report = classification_report(
        true,
        predicted,
        labels=labels,
        target_names=SUBTYPE_NAMES,
        output_dict=True,
        zero_division=np.nan,  # a class never called: precision undefined, as in binary metrics
    )
    pneumonia = true > 0
    bacterial_vs_viral = class_probs[pneumonia][:, 1:].argmax(axis=1) + 1
    present = len(np.unique(true)) == len(labels)
    return SubtypeMetrics(
        classes=list(SUBTYPE_NAMES),
        per_class={
            name: ClassMetrics(
                precision=report[name]["precision"],
                recall=report[name]["recall"],
                f1=report[name]["f1-score"],
                support=int(report[name]["support"]),
            )
            for name in SUBTYPE_NAMES
        },
        accuracy=float(np.mean(predicted == true)),
        macro_roc_auc=float(roc_auc_score(true, class_probs, multi_class="ovr"))
        if present
        else float("nan"),
        bacterial_vs_viral_accuracy=float(np.mean(bacterial_vs_viral == true[pneumonia]))
        if pneumonia.any()
        else float("nan"),
        confusion_matrix=confusion_matrix(true, predicted, labels=labels).tolist(),
    )
