"""Choosing the decision threshold on validation scores."""

from __future__ import annotations

import math

import numpy as np

from pneumolab.config import check_target_sensitivity


def threshold_for_sensitivity(y_true: np.ndarray, prob: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity (``prob >= t`` on positives) is at least ``target``.

    The highest such threshold keeps the most specificity; ties in scores can only raise the
    achieved sensitivity above the target.
    """
    check_target_sensitivity(target)
    positives = np.sort(np.asarray(prob, dtype=float)[np.asarray(y_true) == 1])[::-1]
    if positives.size == 0:
        raise ValueError("cannot choose a threshold for sensitivity: no positive cases")
    needed = math.ceil(target * positives.size - 1e-9)
    return float(positives[needed - 1])
