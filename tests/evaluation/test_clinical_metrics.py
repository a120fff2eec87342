"""The threshold-free and calibration metrics added to ``binary_metrics``."""

import math

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import average_precision_score, balanced_accuracy_score, brier_score_loss

from pneumolab.evaluation.metrics import (
    THRESHOLD_METRICS,
    binary_metrics,
    expected_calibration_error,
    threshold_metrics,
)


def test_hand_computed_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])
    m = binary_metrics(y, p, 0.5)
    assert m.balanced_accuracy == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m.brier == pytest.approx(np.mean((p - y) ** 2))
    # average precision: positives ranked 1, 2, 3, 5, 6, 7 → mean of precision at each of them
    assert m.pr_auc == pytest.approx(np.mean([1, 1, 1, 4 / 5, 5 / 6, 6 / 7]))


def test_agrees_with_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(y, p, 0.55)
    assert m.balanced_accuracy == pytest.approx(balanced_accuracy_score(y, p >= 0.55))
    assert m.pr_auc == pytest.approx(average_precision_score(y, p))
    assert m.brier == pytest.approx(brier_score_loss(y, p))


def test_ece_matches_the_reliability_curve():
    rng = np.random.default_rng(1)
    p = rng.random(1000)
    y = (rng.random(1000) < p**2).astype(int)
    observed, predicted = calibration_curve(y, p, n_bins=10)
    counts = np.histogram(p, bins=10, range=(0, 1))[0]
    expected = np.sum(counts[counts > 0] * np.abs(observed - predicted)) / len(y)
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_ece_is_zero_when_calibrated_and_large_when_overconfident():
    # bin k holds 20 cases at probability (k + 0.5) / 10, of which exactly 2k + 1 are positive
    p = np.repeat((np.arange(10) + 0.5) / 10, 20)
    y = np.concatenate([np.arange(20) < 2 * k + 1 for k in range(10)]).astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    # overconfident: 0.95 / 0.05 said, but only 60% / 40% positive
    p = np.r_[np.full(50, 0.95), np.full(50, 0.05)]
    y = np.r_[np.arange(50) < 30, np.arange(50) < 20].astype(int)
    assert expected_calibration_error(y, p) == pytest.approx(0.35)


def test_single_class_gives_nan_ranking_metrics():
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), 0.5)
    assert math.isnan(m.pr_auc) and math.isnan(m.balanced_accuracy)
    assert m.brier == pytest.approx(np.mean([0.64, 0.16, 0.01]))


def test_threshold_metrics_are_the_threshold_dependent_subset():
    y, p = np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9])
    subset = threshold_metrics(y, p, 0.5).model_dump()
    assert list(subset) == list(THRESHOLD_METRICS)
    assert subset == binary_metrics(y, p, 0.5).model_dump(include=set(THRESHOLD_METRICS))
