"""One image's prediction from its score, threshold and scope checks."""

from __future__ import annotations

import numpy as np

from pneumolab.inference.prediction import gated_prediction
from pneumolab.scope.checks import ScopeChecks


def test_a_float32_score_is_labelled_as_the_metrics_count_it():
    """A network's float32 score just below a float64 threshold that rounds onto it in float32
    (a threshold stored before thresholds were float32 values): the metrics, in float64, call it
    NORMAL, and the served label did not (NumPy compared in float32)."""
    score = np.float32(0.9999899)
    threshold = float(score) + 1e-12  # above the score in float64, equal to it in float32
    assert score >= threshold and not float(score) >= threshold
    result = gated_prediction(
        "x.png",
        score,
        threshold,
        ["NORMAL", "PNEUMONIA"],
        ScopeChecks(),
        ood_score=1.0,
        ood_threshold=10.0,
        scope_verdict=True,
    )
    assert result.label == "NORMAL"
