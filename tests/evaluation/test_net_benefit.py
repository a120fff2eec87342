"""Net benefit (the decision curve): the formula by hand, its identity with sensitivity and
specificity, and the figure an evaluation writes."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pneumolab.evaluation.figures import decision_curve_figure, figure_png
from pneumolab.evaluation.metrics import binary_metrics, net_benefit


def test_hand_computed_case():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.45, 0.6, 0.8, 0.9, 0.95])
    # at 0.5: TP 4 (0.6, 0.8, 0.9, 0.95), FP 1 (0.7) of 10; weight 0.5 / 0.5 = 1
    # at 0.2 (inclusive): TP 6, FP 3 (0.2, 0.3, 0.7); weight 0.2 / 0.8 = 0.25
    assert net_benefit(y, p, [0.5, 0.2]) == pytest.approx([0.4 - 0.1, 0.6 - 0.3 * 0.25])


def test_calling_all_and_calling_none():
    y = np.array([1, 1, 1, 0])
    assert net_benefit(y, np.ones(4), [0.25]) == pytest.approx([0.75 - 0.25 / 3])
    assert net_benefit(y, np.zeros(4), [0.25]) == pytest.approx([0.0])


@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 1)), min_size=2, max_size=60),
    st.floats(0.001, 0.999),
)
def test_equals_its_form_in_sensitivity_and_specificity(cases, p_t):
    y = np.array([truth for truth, _ in cases], dtype=int)
    p = np.array([score for _, score in cases])
    prevalence = y.mean()
    m = binary_metrics(y, p, p_t)
    sensitivity = 0.0 if np.isnan(m.sensitivity) else m.sensitivity
    false_alarms = 0.0 if np.isnan(m.specificity) else 1 - m.specificity
    expected = sensitivity * prevalence - false_alarms * (1 - prevalence) * p_t / (1 - p_t)
    assert net_benefit(y, p, [p_t])[0] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("p_t", [0.0, 1.0, -0.1, float("nan")])
def test_refuses_a_threshold_probability_outside_the_open_interval(p_t):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        net_benefit(np.array([0, 1]), np.array([0.2, 0.8]), [p_t])


@pytest.mark.parametrize(
    ("labels", "probs", "message"),
    [
        ([0, 0, 1], [np.nan, np.nan, 0.9], "NaN"),  # a NaN was counted as called pneumonia
        ([0, 1], [0.2, 0.8, 0.9], "labels against"),
        ([0, 2], [0.2, 0.8], "0 \\(NORMAL\\) or 1"),
    ],
)
def test_refuses_scores_it_cannot_read(labels, probs, message):
    with pytest.raises(ValueError, match=message):
        net_benefit(np.array(labels), np.array(probs), [0.5])


def test_the_figure_marks_the_stored_threshold():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p = np.clip(y * 0.4 + rng.random(200) * 0.6, 0, 1)
    fig = decision_curve_figure(y, p, stored_threshold=0.3, title="val")
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["model", "call all pneumonia", "call none", "stored threshold"]
    marked = ax.get_lines()[-1]
    assert marked.get_ydata()[0] == pytest.approx(net_benefit(y, p, [0.3])[0])
    assert figure_png(fig).startswith(b"\x89PNG")


def test_the_curve_passes_through_its_stored_threshold_dot():
    """Scores bunched near the threshold (between two of the curve's points) left the dot at
    net benefit 0.5 while the line drawn there read 0.009."""
    y, p, threshold = np.array([0, 0, 1, 1]), np.array([0.4929, 0.4949, 0.4964, 0.4985]), 0.49565
    (ax,) = decision_curve_figure(y, p, stored_threshold=threshold).axes
    curve, dot = ax.get_lines()[0], ax.get_lines()[-1]
    on_curve = np.interp(threshold, curve.get_xdata(), curve.get_ydata())
    assert on_curve == pytest.approx(dot.get_ydata()[0]) == pytest.approx(0.5)
