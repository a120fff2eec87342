"""Percentile bootstrap confidence intervals of the clinical metrics, optionally patient-grouped.

Every resample is represented by how often it draws each image (a ``(B, n)`` weight matrix), so
image and patient (cluster) resampling share one vectorised computation of all metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from pneumolab.evaluation.metrics import SCALAR_METRICS, called_positive

CI_METRICS = tuple(name for name in SCALAR_METRICS if name != "ece")
"""The metrics given an interval. Not ECE: resampling biases it upwards (duplicated images make
each bin's gap noisier, never smaller on average), so its percentile interval often lay wholly
above the estimate it was printed beside."""


INTERVAL_METHOD = "patient bootstrap; shares at least their exact interval over patients"
"""How :func:`bootstrap_ci` bounds the metrics, as ``metrics.json`` records it (files without
it were written before shares were bounded by exact intervals)."""


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
    called = called_positive(prob, threshold)
    tp, fp, fn, tn = (
        weights @ (y * called),
        weights @ ((1 - y) * called),
        weights @ (y * ~called),
        weights @ ((1 - y) * ~called),
    )
    n = weights.sum(axis=1)
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
            **_ranking_metrics(y, prob, weights),
        }


PROPORTIONS: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "accuracy": lambda y, called: np.ones_like(called),
    "sensitivity": lambda y, called: y == 1,
    "specificity": lambda y, called: y == 0,
    "precision": lambda y, called: called,
    "npv": lambda y, called: ~called,
}
"""The metrics that are a share of some images (the mask of those images, from the labels and
the calls): near 0 or 1 the percentile bootstrap is too narrow (at 0 or 1 every resample agrees,
and it gives ``[1, 1]``)."""


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
    A share (:data:`PROPORTIONS`) gets the wider of that interval and the exact Clopper-Pearson
    interval of its estimate over its patients (images without ``groups``): with no false
    positive every resample gave specificity ``[1, 1]``, a certainty 191 normal images do not
    give, and one false positive gave a tighter lower bound than none.
    """
    y = np.asarray(y, dtype=float)
    weights = np.vstack([np.ones(len(y)), resample_weights(len(y), groups, n_resamples, seed)])
    values = weighted_metrics(y, prob, threshold, weights)
    intervals = {name: _percentile_interval(values[name][1:], level) for name in CI_METRICS}
    called = called_positive(prob, threshold)
    for name, counted in PROPORTIONS.items():
        estimate, (low, high) = values[name][0], intervals[name]
        if np.isfinite(estimate):
            mask = counted(y, called)
            units = len(np.unique(np.asarray(groups)[mask])) if groups is not None else mask.sum()
            exact_low, exact_high = _exact_interval(estimate, int(units), level)
            intervals[name] = [min(low, exact_low), max(high, exact_high)]
    return intervals


def _exact_interval(share: float, units: int, level: float) -> tuple[float, float]:
    """The Clopper-Pearson interval of a ``share`` of ``units`` (its successes need not be a
    whole number: a share of images counted over patients), from the beta quantiles."""
    successes, tail = share * units, (1 - level) / 2
    low = 0.0 if successes <= 0 else float(beta.ppf(tail, successes, units - successes + 1))
    high = (
        1.0 if successes >= units else float(beta.ppf(1 - tail, successes + 1, units - successes))
    )
    return low, high


def resample_weights(
    n_images: int,
    groups: Sequence[str] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """``(n_resamples, n_images)``: how often each image counts in each bootstrap resample; with
    ``groups`` (patient IDs) whole patients are drawn, every image of a drawn patient counting."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return _draw_counts(n_images, n_resamples, rng)
    patients, patient_of_image = np.unique(np.asarray(groups), return_inverse=True)
    return _draw_counts(len(patients), n_resamples, rng)[:, patient_of_image]


def _percentile_interval(values: np.ndarray, level: float) -> list[float]:
    """The percentile interval of the finite ``values``; ``[nan, nan]`` when there are none."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    defined = values[np.isfinite(values)]
    if not defined.size:
        return [np.nan, np.nan]
    return [float(b) for b in np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])]


@dataclass(frozen=True)
class PairedDifference:
    """ROC AUC of model A minus model B on the same images, with its paired bootstrap interval."""

    difference: float
    low: float
    high: float

    @property
    def resolved(self) -> bool:
        """True when the interval excludes zero: the data tell the two models apart."""
        return self.low > 0 or self.high < 0


def paired_auc_difference(
    y: np.ndarray,
    draws_a: Sequence[np.ndarray],
    draws_b: Sequence[np.ndarray],
    groups: Sequence[str] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> PairedDifference:
    """Mean ROC AUC of A's score draws minus B's (one draw per scoring of the same images, e.g.
    the shift protocol's), and its percentile interval: both models are scored on every
    resample of the same (patient-grouped) bootstrap, so what they share cancels out."""
    y = np.asarray(y, dtype=float)
    weights = np.vstack([np.ones(len(y)), resample_weights(len(y), groups, n_resamples, seed)])

    def mean_auc(draws: Sequence[np.ndarray]) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):  # one-class resamples: NaN, left out
            per_draw = [
                _ranking_metrics(y, np.asarray(p, float), weights)["roc_auc"] for p in draws
            ]
        return np.mean(per_draw, axis=0)

    difference = mean_auc(draws_a) - mean_auc(draws_b)
    low, high = _percentile_interval(difference[1:], level)
    return PairedDifference(float(difference[0]), low, high)
