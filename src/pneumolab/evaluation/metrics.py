"""Clinical metrics of a binary classifier at a decision threshold (positive class = pneumonia)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    roc_auc_score,
)

from pneumolab.results import BinaryMetrics, ThresholdMetrics

ECE_BINS = 10
THRESHOLD_METRICS = (
    "accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "balanced_accuracy",
    "confusion_matrix",
)
"""The keys of :func:`binary_metrics` that depend on the threshold."""
SCALAR_METRICS = (*THRESHOLD_METRICS[:-1], "roc_auc", "pr_auc", "brier", "ece")
"""Every number :func:`binary_metrics` reports about the classifier (for tables and intervals)."""


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator / denominator) if denominator else float("nan")


def calibration_bins(prob: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin index of every probability: ``n_bins`` equal-width bins over [0, 1], assigned exactly as
    ``sklearn.calibration.calibration_curve(strategy="uniform")`` does (right edges inclusive)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    return np.searchsorted(edges, np.asarray(prob, dtype=float))


def expected_calibration_error(
    y_true: np.ndarray, prob: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE of the pneumonia probability: ``sum_b n_b / n * |observed rate_b - mean prob_b|`` over
    ``n_bins`` equal-width bins (:func:`calibration_bins`); 0 for a perfectly calibrated model."""
    y_true = np.asarray(y_true, dtype=float)
    prob = np.asarray(prob, dtype=float)
    gaps = np.bincount(calibration_bins(prob, n_bins), weights=y_true - prob, minlength=n_bins)
    return float(np.abs(gaps).sum() / len(y_true))


def called_positive(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Which scores are called pneumonia at ``threshold`` (``prob >= threshold``), compared in
    float64: NumPy compares float32 scores with a Python float in float32, which can round a
    threshold stored in float64 onto a score and call that image otherwise than the metrics."""
    return np.asarray(prob, dtype=np.float64) >= threshold


def binary_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> BinaryMetrics:
    """Threshold metrics (accuracy, sensitivity/recall, specificity, precision/PPV, NPV, F1,
    balanced accuracy) at ``threshold`` plus threshold-free ones: ROC AUC, PR AUC (average
    precision), Brier score and ECE (:func:`expected_calibration_error`).

    A case is called positive when ``prob >= threshold``. Undefined ratios are NaN (ROC AUC and
    PR AUC are NaN when only one class is present). ``confusion_matrix`` is ``[[tn, fp], [fn, tp]]``.
    """
    y_true = np.asarray(y_true).astype(int)
    prob = np.asarray(prob, dtype=float)
    y_pred = called_positive(prob, threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel())
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    both_classes = len(np.unique(y_true)) == 2
    nan = float("nan")
    return BinaryMetrics(
        n=len(y_true),
        threshold=float(threshold),
        accuracy=_ratio(tp + tn, len(y_true)),
        sensitivity=sensitivity,
        specificity=specificity,
        precision=_ratio(tp, tp + fp),
        npv=_ratio(tn, tn + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        balanced_accuracy=(sensitivity + specificity) / 2,
        roc_auc=float(roc_auc_score(y_true, prob)) if both_classes else nan,
        pr_auc=float(average_precision_score(y_true, prob)) if both_classes else nan,
        brier=float(brier_score_loss(y_true, prob)),
        ece=expected_calibration_error(y_true, prob),
        confusion_matrix=[[tn, fp], [fn, tp]],
    )


def net_benefit(
    y_true: np.ndarray, prob: np.ndarray, threshold_probabilities: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Net benefit of calling pneumonia where ``prob >= p_t``, at each threshold probability
    ``p_t`` in (0, 1): ``TP / n - FP / n * p_t / (1 - p_t)`` (Vickers and Elkin 2006; the decision
    curve). ``p_t`` states how a false alarm weighs against a missed pneumonia: at 0.2 a miss
    costs as much as four false alarms. Calling every image pneumonia ("treat all") is
    ``prob = 1`` everywhere; calling none has net benefit 0. ValueError for labels other than
    0 and 1, a NaN probability, or labels and probabilities of different lengths."""
    labels = np.asarray(y_true)
    prob = np.asarray(prob, dtype=float)
    p_t = np.asarray(threshold_probabilities, dtype=float)
    if not np.all((p_t > 0) & (p_t < 1)):
        raise ValueError("threshold probabilities must lie strictly between 0 and 1")
    if labels.shape != prob.shape or labels.ndim != 1:
        raise ValueError(f"{labels.shape} labels against {prob.shape} probabilities")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 (NORMAL) or 1 (PNEUMONIA)")
    if np.isnan(prob).any():
        raise ValueError("a probability is NaN")
    y_true = labels.astype(bool)
    n = len(y_true)
    if n == 0:
        return np.full(p_t.shape, np.nan)
    called = {
        truth: len(scores) - np.searchsorted(np.sort(scores), p_t, side="left")
        for truth, scores in ((True, prob[y_true]), (False, prob[~y_true]))
    }
    return called[True] / n - called[False] / n * p_t / (1 - p_t)


def threshold_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float) -> ThresholdMetrics:
    """Only the :data:`THRESHOLD_METRICS` of :func:`binary_metrics` at ``threshold``."""
    return binary_metrics(y_true, prob, threshold).threshold_only()


def format_metric(value: object) -> str:
    """A metric for a table: floats to 4 decimals, None and NaN (undefined) as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_share(value: float | None, decimals: int = 1) -> str:
    """A share as a percentage (``decimals`` after the point), None as a dash."""
    return "—" if value is None else f"{value:.{decimals}%}"


NO_SPREAD = "no spread (every resample equal)"
"""What a zero-width interval reads as: printed as ``1.0000 – 1.0000`` it looked like certainty."""


def format_interval(interval: Sequence[float | None] | None) -> str:
    """A ``[low, high]`` interval as ``low – high`` (a dash for a missing bound; one dash where
    neither is known, as for an AUC on one class); :data:`NO_SPREAD` where every resample gave
    the estimate (an AUC of 1: no error seen, which is not certainty); empty if None."""
    if not interval:
        return ""
    bounds = list(map(format_metric, interval))
    if set(bounds) == {"—"}:
        return "—"
    low, high = interval
    no_spread = low is not None and high is not None and math.isclose(low, high, rel_tol=1e-9)
    return NO_SPREAD if no_spread else " – ".join(bounds)  # isclose: a weighted sum's last bit
