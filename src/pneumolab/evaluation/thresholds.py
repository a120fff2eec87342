"""Choosing the decision threshold on validation scores."""

from __future__ import annotations

import math

import numpy as np


def threshold_for_sensitivity(y_true: np.ndarray, prob: np.ndarray, target: float = 0.95) -> float:
    """Highest threshold whose sensitivity (``prob >= t`` on positives) is at least ``target``.

    The highest such threshold keeps the most specificity; ties in scores can only raise the
    achieved sensitivity above the target.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    positives = np.sort(np.asarray(prob, dtype=float)[np.asarray(y_true) == 1])[::-1]
    if positives.size == 0:
        raise ValueError("cannot choose a threshold for sensitivity: no positive cases")
    needed = math.ceil(target * positives.size - 1e-9)
    return float(positives[needed - 1])
