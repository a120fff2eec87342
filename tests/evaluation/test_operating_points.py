"""Operating points on constructed, hand-checkable score sets."""

import numpy as np
import pytest

from pneumolab.evaluation.operating_points import (
    choose_operating_points,
    cost_threshold,
    oracle_threshold,
    with_margin,
    youden_threshold,
)

# threshold:   0.9 0.8 0.7 0.6 0.5 0.4 0.35 0.3 0.2 0.1
# TP (of 5):    1   2   3   3   4   4   5    5   5   5
# FP (of 5):    0   0   0   1   1   2   2    3   4   5
# Youden's J:  .2  .4  .6  .4  .6  .4  .6   .4  .2   0   → 0.7 (highest of the ties)
# 5*FN + FP:   20  15  10  11   6   7   2    3   4   5   → 0.35
# FN + FP:      4   3   2   3   2   3   2    3   4   5   → 0.7 (highest of the ties)
NEGATIVES = [0.1, 0.2, 0.3, 0.4, 0.6]
POSITIVES = [0.35, 0.5, 0.7, 0.8, 0.9]
Y = np.r_[np.zeros(5), np.ones(5)]
P = np.r_[NEGATIVES, POSITIVES]


def test_youden_threshold():
    assert youden_threshold(Y, P) == pytest.approx(0.7)
    assert oracle_threshold(Y, P) == youden_threshold(Y, P)


def test_cost_threshold():
    assert cost_threshold(Y, P) == pytest.approx(0.35)
    assert cost_threshold(Y, P, cost_fn=1.0, cost_fp=1.0) == pytest.approx(0.7)
    assert cost_threshold(Y, P, cost_fn=1.0, cost_fp=10.0) == pytest.approx(0.7)


def test_the_cost_rule_may_call_no_image_positive():
    """Calling none (cost 5 x 1 positive = 5) was never a candidate: the rule returned 0.95,
    at a cost of 6 (a review's case)."""
    y = np.array([0, 0, 0, 0, 1, 0, 0])
    p = np.array([0.78, 0.23, 0.71, 0.71, 0.09, 0.68, 0.95])
    threshold = cost_threshold(y, p)
    assert threshold == pytest.approx(0.975)  # halfway to 1: no float32 rescoring crosses it
    called = p >= threshold
    assert 5 * np.sum(y & ~called) + np.sum(~y.astype(bool) & called) == 5


def test_both_classes_are_required():
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold(np.ones(3), np.array([0.2, 0.5, 0.9]))
    with pytest.raises(ValueError, match="both classes"):
        cost_threshold(np.zeros(3), np.array([0.2, 0.5, 0.9]))


def test_chosen_points_carry_rule_params_and_provenance():
    by_name = choose_operating_points(Y, P, "validation split of run-1", 0.95)
    assert list(by_name) == ["sensitivity_95", "youden", "cost_ratio_5"]
    # the rules pick 0.35 (all 5 positives needed), 0.7 and 0.35; each is stored halfway down to
    # the next lower score (0.3, 0.6), so every image keeps its label with a margin
    assert by_name["sensitivity_95"].threshold == pytest.approx(0.325)
    assert by_name["youden"].threshold == pytest.approx(0.65)
    assert by_name["cost_ratio_5"].threshold == pytest.approx(0.325)
    assert by_name["sensitivity_95"].params == {"target_sensitivity": 0.95}
    assert by_name["cost_ratio_5"].params == {"cost_fn": 5.0, "cost_fp": 1.0}
    assert by_name["sensitivity_95"].provenance == (
        "validation split of run-1, n=10, rule: highest threshold with sensitivity >= 0.95"
    )
    assert by_name["youden"].params == {} and by_name["youden"].val_metrics is None
    other = choose_operating_points(Y, P, "v", target_sensitivity=0.8, cost_ratio=2)
    assert list(other) == ["sensitivity_80", "youden", "cost_ratio_2"]
    assert other["sensitivity_80"].threshold == pytest.approx(0.45)


def test_margin_keeps_every_label_and_survives_tiny_score_changes():
    from pneumolab.evaluation.operating_points import with_margin

    rule = youden_threshold(Y, P)
    stored = with_margin(rule, P)
    assert np.array_equal(rule <= P, stored <= P)
    assert np.array_equal(stored <= P, stored <= (P - 1e-7))  # the boundary image no longer flips
    assert P.min() == 0.1
    # nothing lower (every image called positive): half way to 0, not on the lowest score,
    # which a rescoring a hair lower (ONNX, an ensemble's mean) would call NORMAL
    assert with_margin(0.1, P) == float(np.float32(0.05))  # thresholds are float32 values


@pytest.mark.parametrize("threshold", [0.3, 0.5, 1e-300])
def test_a_margin_between_adjacent_floats_keeps_every_label(threshold):
    """No float lies between a threshold and the score just below it: the midpoint rounded onto
    the lower score (0.3), calling that image positive, or onto the threshold (0.5)."""
    below = np.nextafter(threshold, 0.0)
    scores = np.array([threshold, below, 0.0])
    moved = with_margin(threshold, scores)
    assert moved == threshold
    assert list(scores >= moved) == [True, False, False]


def test_a_margin_moves_halfway_to_the_next_lower_score():
    assert with_margin(0.5, np.array([0.5, 0.25, 0.9])) == 0.375


@pytest.mark.parametrize("steps_down", [0, 1, 2, 3])
def test_float32_scores_keep_the_labels_the_metrics_counted(steps_down):
    """A positive one float32 step above a negative: the float64 midpoint rounded (to even) onto
    the negative's score on every other such pair when NumPy compared the float32 scores with it
    in float32 (served labels, the subtype and report masks), calling that negative pneumonia
    though the metrics had called it normal."""
    positive = np.float32(0.99999)
    for _ in range(steps_down):
        positive = np.nextafter(positive, np.float32(0))
    negative = np.nextafter(positive, np.float32(0))
    scores = np.array([positive, negative, 0.2, 0.1, 0.999995, 0.999999], dtype=np.float32)
    labels = np.array([1, 0, 0, 0, 1, 1])
    points = choose_operating_points(labels, scores, "val", target_sensitivity=1.0)
    for point in points.values():
        assert list(scores >= point.threshold) == list(scores.astype(float) >= point.threshold)
    assert list(scores >= points["sensitivity_100"].threshold) == [
        True,
        False,
        False,
        False,
        True,
        True,
    ]


def test_calling_none_stays_above_a_saturated_float32_score():
    """Ten negatives at exactly 1.0 (a saturated sigmoid) and one positive: calling none is
    cheapest, at a threshold that 1.0 in float32 must not reach (1 + 2**-52 rounds to 1.0)."""
    scores = np.r_[np.float32(0.2), np.ones(10, np.float32)].astype(np.float32)
    labels = np.r_[1, np.zeros(10, int)]
    threshold = choose_operating_points(labels, scores, "val")["cost_ratio_5"].threshold
    assert not (scores >= threshold).any()
    assert not (scores.astype(float) >= threshold).any()


def test_scores_within_a_float32_step_keep_the_positive_when_served_in_float32():
    """An ensemble's validation scores are float64 means, served as float32 ones: two within a
    float32 step round to one score, and no threshold keeps both labels; the positive's is kept
    (a float32 threshold at or below the higher score's float32 value), not the negative's."""
    step = float(np.spacing(np.float32(0.7)))
    centre = float(np.float32(0.7))
    below, threshold = centre - 0.3 * step, centre + 0.4 * step
    moved = with_margin(threshold, np.array([threshold, below]))
    assert below < moved < threshold  # on validation, in float64, both labels kept
    assert float(np.float32(threshold)) >= moved  # served in float32, the positive stays one
