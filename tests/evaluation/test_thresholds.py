import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pneumolab.evaluation.thresholds import threshold_for_sensitivity


def test_constructed_scores():
    # 20 positives with scores 0.05, 0.10, ..., 1.00; 95% sensitivity needs 19 of them → t = 0.10
    pos = np.arange(1, 21) * 0.05
    neg = np.array([0.01, 0.02, 0.5])
    y = np.r_[np.ones(20), np.zeros(3)]
    t = threshold_for_sensitivity(y, np.r_[pos, neg], 0.95)
    assert t == pytest.approx(0.10)
    assert threshold_for_sensitivity(y, np.r_[pos, neg], 1.0) == pytest.approx(0.05)
    assert threshold_for_sensitivity(y, np.r_[pos, neg], 0.5) == pytest.approx(0.55)


def test_requires_positives_and_valid_target():
    with pytest.raises(ValueError, match="no positive"):
        threshold_for_sensitivity(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.9)
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(np.ones(3), np.array([0.1, 0.2, 0.3]), 1.5)


@settings(max_examples=50)
@given(
    scores=st.lists(st.floats(0, 1), min_size=2, max_size=60),
    target=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_sensitivity_reached_and_threshold_is_highest(scores, target, seed):
    p = np.array(scores)
    y = np.random.default_rng(seed).integers(0, 2, len(p))
    y[0] = 1
    t = threshold_for_sensitivity(y, p, target)
    sens = (p[y == 1] >= t).mean()
    assert sens >= target - 1e-9
    higher = p[(y == 1) & (p > t)]
    if higher.size:  # the next higher positive score would miss the target
        assert (p[y == 1] >= higher.min()).mean() < target
