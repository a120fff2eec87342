"""Percentile bootstrap confidence intervals of the clinical metrics, optionally patient-grouped.

Every resample is represented by how often it draws each image (a ``(B, n)`` weight matrix), so
image and patient (cluster) resampling share one vectorised computation of all metrics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pneumolab.evaluation.metrics import ECE_BINS, SCALAR_METRICS, calibration_bins

CI_METRICS = SCALAR_METRICS


def _draw_counts(n_units: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_resamples, n_units)`` counts of each unit in draws of ``n_units`` with replacement."""
    draws = rng.integers(0, n_units, (n_resamples, n_units))
    draws += np.arange(n_resamples)[:, None] * n_units
    counts = np.bincount(draws.ravel(), minlength=n_resamples * n_units)
    return counts.reshape(n_resamples, n_units).astype(float)


def _ranking_metrics(y: np.ndarray, prob: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted ROC AUC (trapezoids, ties count half) and average precision, as in sklearn."""
    order = np.argsort(-prob, kind="stable")
    y, prob, weights = y[order], prob[order], weights[:, order]
    ends = np.r_[prob[1:] != prob[:-1], True]  # last position of every group of tied scores
    tp = np.cumsum(weights * y, axis=1)[:, ends]
    fp = np.cumsum(weights * (1 - y), axis=1)[:, ends]
    new_tp = np.diff(tp, axis=1, prepend=0.0)
    new_fp = np.diff(fp, axis=1, prepend=0.0)
    positives, negatives = tp[:, -1], fp[:, -1]
    area = (new_fp * (2 * tp - new_tp) / 2).sum(axis=1)
    called = tp + fp
    precision = np.divide(tp, called, out=np.zeros_like(tp), where=called > 0)
    both = (positives > 0) & (negatives > 0)
    return {
        "roc_auc": np.where(both, area / (positives * negatives), np.nan),
        "pr_auc": np.where(both, (new_tp * precision).sum(axis=1) / positives, np.nan),
    }


def weighted_metrics(
    y: np.ndarray, prob: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """The :data:`CI_METRICS` for every row of ``weights`` (how often each image is counted);
    NaN where a metric is undefined. A row of ones gives :func:`binary_metrics`' values."""
    y = np.asarray(y, dtype=float)
    prob = np.asarray(prob, dtype=float)
    called = prob >= threshold
    tp, fp, fn, tn = (
        weights @ (y * called),
        weights @ ((1 - y) * called),
        weights @ (y * ~called),
        weights @ ((1 - y) * ~called),
    )
    n = weights.sum(axis=1)
    bins = np.eye(ECE_BINS)[calibration_bins(prob)]
    with np.errstate(divide="ignore", invalid="ignore"):
        sensitivity, specificity = tp / (tp + fn), tn / (tn + fp)
        return {
            "accuracy": (tp + tn) / n,
            "sensitivity": sensitivity,
            "specificity": specificity,
            "precision": tp / (tp + fp),
            "npv": tn / (tn + fn),
            "f1": 2 * tp / (2 * tp + fp + fn),
            "balanced_accuracy": (sensitivity + specificity) / 2,
            "brier": weights @ (prob - y) ** 2 / n,
            "ece": np.abs(weights @ (bins * (y - prob)[:, None])).sum(axis=1) / n,
            **_ranking_metrics(y, prob, weights),
        }


def bootstrap_ci(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    groups: Sequence[str] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float]]:
    """Percentile bootstrap intervals ``metric -> [low, high]`` of the :data:`CI_METRICS`.

    With ``groups`` (patient IDs), whole patients are drawn with replacement and every image of
    a drawn patient is counted (cluster bootstrap: images of one child are not independent);
    otherwise images are drawn. Resamples where a metric is undefined (e.g. no negatives for
    specificity) are left out for that metric; ``[nan, nan]`` when it is never defined.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    if groups is None:
        weights = _draw_counts(len(y), n_resamples, rng)
    else:
        patients, patient_of_image = np.unique(np.asarray(groups), return_inverse=True)
        weights = _draw_counts(len(patients), n_resamples, rng)[:, patient_of_image]
    values = weighted_metrics(y, prob, threshold, weights)
    tails = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    intervals = {}
    for name in CI_METRICS:
        defined = values[name][np.isfinite(values[name])]
        bounds = np.percentile(defined, tails) if defined.size else [np.nan, np.nan]
        intervals[name] = [float(b) for b in bounds]
    return intervals
