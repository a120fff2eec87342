import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from pneumolab.evaluation.metrics import binary_metrics, called_positive


def test_hand_computed_case():
    # 4 negatives, 6 positives; threshold 0.5 → tn=3 fp=1 fn=2 tp=4
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])
    m = binary_metrics(y, p, 0.5)
    assert m.confusion_matrix == [[3, 1], [2, 4]]
    assert m.n == 10
    assert m.accuracy == pytest.approx(7 / 10)
    assert m.sensitivity == pytest.approx(4 / 6)
    assert m.specificity == pytest.approx(3 / 4)
    assert m.precision == pytest.approx(4 / 5)
    assert m.npv == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    # AUC by pair counting: positives beat negatives in 21 of 24 pairs (0.7 beats 0.4, 0.45, 0.6)
    assert m.roc_auc == pytest.approx(21 / 24)


def test_threshold_is_inclusive():
    m = binary_metrics(np.array([0, 1]), np.array([0.3, 0.5]), 0.5)
    assert m.confusion_matrix == [[1, 0], [0, 1]]


def test_agrees_with_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(y, p, 0.55)
    pred = (p >= 0.55).astype(int)
    assert m.sensitivity == pytest.approx(recall_score(y, pred))
    assert m.specificity == pytest.approx(recall_score(1 - y, 1 - pred))
    assert m.precision == pytest.approx(precision_score(y, pred))
    assert m.f1 == pytest.approx(f1_score(y, pred))
    assert m.roc_auc == pytest.approx(roc_auc_score(y, p))


def test_single_class_gives_nan_not_error():
    m = binary_metrics(np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), 0.5)
    assert math.isnan(m.roc_auc)
    assert math.isnan(m.specificity)
    assert m.sensitivity == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("interval", "text"),
    [
        ([0.81234, 0.9], "0.8123 – 0.9000"),
        ([None, 0.9], "— – 0.9000"),
        ([None, None], "—"),  # an AUC on one class: it printed "— – —"
        ([float("nan"), float("nan")], "—"),
        (None, ""),
        ([1.0, 1.0], "no spread (every resample equal)"),  # it read "1.0000 – 1.0000"
        # a Brier score of 0.04 in every resample, summed with weights: equal to the last bit
        ([0.039999999999999994, 0.04000000000000001], "no spread (every resample equal)"),
        ([0.04, 0.0401], "0.0400 – 0.0401"),
    ],
)
def test_an_interval_reads_as_one_dash_where_neither_bound_is_known(interval, text):
    from pneumolab.evaluation.metrics import format_interval

    assert format_interval(interval) == text


def test_float32_scores_are_called_as_the_metrics_count_them():
    """A float32 score just below a float64 threshold that rounds onto it in float32 (thresholds
    stored before they were float32 values): NumPy's own comparison called it positive."""
    scores = np.array([np.float32(0.9999899), np.float32(0.5)], dtype=np.float32)
    threshold = float(scores[0]) + 1e-12
    assert (scores >= threshold)[0]  # NumPy compares in float32
    assert list(called_positive(scores, threshold)) == [False, False]
    assert binary_metrics(np.array([0, 0]), scores, threshold).specificity == 1.0
