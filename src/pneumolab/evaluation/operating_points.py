"""Operating points: decision thresholds chosen on validation scores by a stated rule.

Every point records its rule, the rule's parameters and where it was chosen (its provenance), so a
threshold reported on the test split can be traced back to the validation split it came from.
:func:`oracle_threshold` is the exception: it is chosen on the split being evaluated and serves to
diagnose threshold drift only.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from pneumolab.evaluation.thresholds import threshold_for_sensitivity
from pneumolab.results import StoredOperatingPoint

DEFAULT_COST_RATIO = 5.0


def _roc(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False and true positive counts at every distinct score (highest first) as threshold."""
    y_true = np.asarray(y_true).astype(int)
    if len(np.unique(y_true)) != 2:
        raise ValueError("choosing this operating point needs both classes in the scores")
    fpr, tpr, thresholds = roc_curve(y_true, prob, drop_intermediate=False)
    positives = int(y_true.sum())
    # roc_curve starts at an infinite threshold (no case called positive): skipped
    fp = np.rint(fpr[1:] * (len(y_true) - positives))
    tp = np.rint(tpr[1:] * positives)
    return fp, tp, thresholds[1:]


def youden_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising Youden's J = sensitivity + specificity - 1 (highest one on ties)."""
    fp, tp, thresholds = _roc(y_true, prob)
    # J * positives * negatives in integer counts, so that equal J values tie exactly
    return float(thresholds[np.argmax(tp * fp[-1] - fp * tp[-1])])


def cost_threshold(
    y_true: np.ndarray, prob: np.ndarray, cost_fn: float = DEFAULT_COST_RATIO, cost_fp: float = 1.0
) -> float:
    """Threshold minimising ``cost_fn * FN + cost_fp * FP`` (highest one on ties); above every
    score where calling no image positive costs least (``cost_fn`` x the positives)."""
    fp, tp, thresholds = _roc(y_true, prob)
    top = float(thresholds[0])  # calling none: halfway to 1, so that a rescoring cannot cross it
    above_all = float32_between(top, 1.0)
    if above_all is None:  # no float32 between: just above 1, where no probability reaches
        above_all = float(np.nextafter(np.float32(max(top, 1.0)), np.float32(2.0)))
    fp, tp, thresholds = np.r_[0, fp], np.r_[0, tp], np.r_[above_all, thresholds]
    return float(thresholds[np.argmin(cost_fn * (tp[-1] - tp) + cost_fp * fp)])


def oracle_threshold(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Youden-best threshold on the evaluated split itself: an oracle, for diagnosis only (how much
    a better-placed threshold would recover), never a valid operating point."""
    return youden_threshold(y_true, prob)


def float32_between(low: float, high: float) -> float | None:
    """The midpoint of ``low`` and ``high`` rounded to float32, where that lies strictly between
    them; None where it does not (adjacent floats). A float32 threshold compares alike in float32
    and float64: networks score in float32, and NumPy compares a float32 score with a Python
    float in float32, which rounded a float64 midpoint onto a score and flipped that image.
    Two float64 scores (an ensemble's validation means) less than a float32 step apart round
    to one float32 score where served: no threshold keeps both labels there, and this one,
    at or below the higher score's float32 value, keeps the positive's (a missed pneumonia is
    the costly error)."""
    middle = float(np.float32((low + high) / 2))
    return middle if low < middle < high else None


def with_margin(threshold: float, prob: np.ndarray) -> float:
    """Move a threshold that equals a validation score halfway down to the next lower score
    (to half its value where no score is lower: every image called positive), as a float32
    value (:func:`float32_between`).

    Every validation image keeps its label, but the boundary image no longer sits exactly on the
    threshold, so recomputing the same scores elsewhere (another device, rounding in a CSV, an
    ensemble's mean) cannot flip it.
    """
    lower = np.asarray(prob, dtype=float)
    lower = lower[lower < threshold]
    below = float(lower.max()) if lower.size else min(0.0, float(threshold))
    middle = float32_between(below, float(threshold))
    # adjacent floats have no float32 between them: the threshold stays on its score
    return float(threshold) if middle is None else middle


def choose_operating_points(
    y_true: np.ndarray,
    prob: np.ndarray,
    source: str,
    target_sensitivity: float = 0.95,
    cost_ratio: float = DEFAULT_COST_RATIO,
) -> dict[str, StoredOperatingPoint]:
    """The target-sensitivity point (first: the default), Youden's J and the cost-ratio point, by
    name (their validation metrics are the caller's to add),
    all chosen on the validation scores of ``source`` (e.g. ``"validation split of run-1"``),
    each placed :func:`with_margin` below the score the rule picked."""
    where = f"{source}, n={len(y_true)}"
    sensitivity_rule = f"highest threshold with sensitivity >= {target_sensitivity:g}"
    cost_rule = f"minimum cost {cost_ratio:g} * FN + 1 * FP"
    youden_rule = "maximum Youden's J = sensitivity + specificity - 1"
    return {
        f"sensitivity_{100 * target_sensitivity:g}": StoredOperatingPoint(
            threshold=with_margin(
                threshold_for_sensitivity(y_true, prob, target_sensitivity), prob
            ),
            rule=sensitivity_rule,
            params={"target_sensitivity": target_sensitivity},
            provenance=f"{where}, rule: {sensitivity_rule}",
        ),
        "youden": StoredOperatingPoint(
            threshold=with_margin(youden_threshold(y_true, prob), prob),
            rule=youden_rule,
            provenance=f"{where}, rule: {youden_rule}",
        ),
        f"cost_ratio_{cost_ratio:g}": StoredOperatingPoint(
            threshold=with_margin(cost_threshold(y_true, prob, cost_ratio, 1.0), prob),
            rule=cost_rule,
            params={"cost_fn": cost_ratio, "cost_fp": 1.0},
            provenance=f"{where}, rule: {cost_rule}",
        ),
    }
