"""Percentile bootstrap confidence intervals of the clinical metrics, optionally patient-grouped.

Every resample is represented by how often it draws each image (a ``(B, n)`` weight matrix), so
image and patient (cluster) resampling share one vectorised computation of all metrics.

A resample where a metric is undefined (one class only: no ROC AUC; no negatives: no
specificity) is left out of that metric's interval and counted (:class:`ResampleCounts`). Where
more are left out than one tail of the interval holds (:func:`most_dropped`: 24 of 1,000 at
95%), the left-out ones could have been that whole tail and the bound is unknown: the metric gets
no interval (NaN bounds), as ``scipy.stats.bootstrap`` gives none (NaN, with a warning) where its
statistic is undefined in any resample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from pneumolab.evaluation.metrics import SCALAR_METRICS, called_positive, format_interval
from pneumolab.results import EvaluationMetrics, ResampleCounts

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


@dataclass(frozen=True)
class BootstrapIntervals:
    """:func:`bootstrap_ci`'s intervals ``metric -> [low, high]`` and the resamples behind them."""

    bounds: dict[str, list[float]]
    resamples: ResampleCounts


def bootstrap_ci(
    y: np.ndarray,
    prob: np.ndarray,
    threshold: float,
    groups: Sequence[str] | np.ndarray | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapIntervals:
    """Percentile bootstrap intervals ``metric -> [low, high]`` of the :data:`CI_METRICS`.

    With ``groups`` (patient IDs), whole patients are drawn with replacement and every image of
    a drawn patient is counted (cluster bootstrap: images of one child are not independent);
    otherwise images are drawn. Resamples where a metric is undefined (e.g. no negatives for
    specificity) are left out for that metric and counted; ``[nan, nan]`` where more than
    :func:`most_dropped` are (so when it is never defined).
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
        if np.isfinite(estimate) and np.isfinite(low):  # no interval stays none
            mask = counted(y, called)
            units = len(np.unique(np.asarray(groups)[mask])) if groups is not None else mask.sum()
            exact_low, exact_high = _exact_interval(estimate, int(units), level)
            intervals[name] = [min(low, exact_low), max(high, exact_high)]
    used = {name: int(np.isfinite(values[name][1:]).sum()) for name in CI_METRICS}
    counts = ResampleCounts(
        drawn=n_resamples, max_dropped=most_dropped(n_resamples, level), used=used
    )
    return BootstrapIntervals(intervals, counts)


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


def most_dropped(n_resamples: int, level: float) -> int:
    """The most resamples that may be left out of a percentile interval at ``level`` (its metric
    undefined there) for it still to be given: fewer than one tail holds, ``(1 - level) / 2`` of
    them (24 of 1,000 at 95%). As many could all have lain beyond every defined one, and the
    bound would be one of them, unknown."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return math.ceil(round((1 - level) / 2 * n_resamples, 9)) - 1


def _percentile_interval(values: np.ndarray, level: float) -> list[float]:
    """The percentile interval of the finite ``values``; ``[nan, nan]`` where more than
    :func:`most_dropped` of them are not finite."""
    defined = values[np.isfinite(values)]
    if values.size - defined.size > most_dropped(values.size, level):
        return [np.nan, np.nan]
    return [float(b) for b in np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])]


def resamples_text(used: int, drawn: int) -> str:
    """How many resamples an interval rests on, for a table cell: ``976 of 1,000 resamples``."""
    return f"{used:,} of {drawn:,} resamples"


def interval_cell(interval: str, used: int, drawn: int, withheld: bool) -> str:
    """A table cell of an ``interval`` (as text) resting on ``used`` of ``drawn`` resamples: as
    it is where all define it, else with their count, or ``none (... define it)`` where
    ``withheld`` (too few define it for an interval)."""
    if used == drawn:
        return interval
    rests_on = resamples_text(used, drawn)
    return f"none ({rests_on} define it)" if withheld else f"{interval} ({rests_on})"


def _partly_left_out(counts: ResampleCounts, metric: str) -> bool:
    """Whether some resamples, not all, were left out of ``metric``'s interval (one never defined,
    as an AUC on one class, has no figure to bound either)."""
    return 0 < counts.dropped(metric) < counts.drawn


def interval_text(metrics: EvaluationMetrics, metric: str) -> str:
    """``metric``'s interval as :func:`format_interval` writes it, with the resamples it rests
    on where some were left out, or ``none (...)`` where too many were for an interval."""
    interval, counts = metrics.ci95.get(metric), metrics.ci95_resamples
    text = format_interval(interval)
    if counts is None or not _partly_left_out(counts, metric):
        return text
    return interval_cell(text, counts.used[metric], counts.drawn, counts.withheld(metric))


def left_out_note(metrics: EvaluationMetrics, shown: Sequence[str]) -> str:
    """:func:`left_out_rule` where resamples were left out of an interval of the ``shown``
    metrics; "" where none was (or the file predates the count)."""
    counts = metrics.ci95_resamples
    if counts is None or not any(_partly_left_out(counts, name) for name in shown):
        return ""
    return left_out_rule(counts.max_dropped, counts.drawn)


def left_out_rule(max_dropped: int, drawn: int) -> str:
    """What the bootstrap does with resamples where a metric is undefined, in a sentence."""
    return (
        "Bootstrap resamples where a metric is undefined (a class, or a decision, absent from "
        "the resample: no ROC AUC on one class) are left out of its interval, which then rests "
        f"on fewer than drawn; with more than {max_dropped:,} of {drawn:,} left out it has "
        "none: they could have held a whole tail of it."
    )


@dataclass(frozen=True)
class PairedDifference:
    """ROC AUC of model A minus model B on the same images, with its paired bootstrap interval
    (NaN bounds where too few resamples define it: :func:`most_dropped`)."""

    difference: float
    low: float
    high: float
    used: int
    """The resamples the interval rests on: those with both classes."""
    drawn: int
    max_dropped: int
    """The most resamples that could be left out with an interval given (:func:`most_dropped`)."""

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
    used = int(np.isfinite(difference[1:]).sum())
    return PairedDifference(
        float(difference[0]), low, high, used, n_resamples, most_dropped(n_resamples, level)
    )
