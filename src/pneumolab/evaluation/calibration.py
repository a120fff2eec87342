"""Calibration fitted on validation: temperature and Platt scaling (the reliability diagram is
:func:`pneumolab.evaluation.figures.reliability_figure`).

Temperature scaling divides the model's logit by one scalar ``T > 0`` chosen to minimise the
validation log-loss (Guo et al. 2017). It changes no ranking (ROC AUC is unchanged); ``T > 1``
softens an overconfident model. Platt scaling fits a slope *and an intercept* on the logit
(logistic regression), so it can also remove a constant shift, such as the one class-weighted
training puts towards the rarer class. Both work on stored probabilities, converted to logits,
and both fit Platt's smoothed targets, ``(N+ + 1) / (N+ + 2)`` and ``1 / (N- + 2)`` (Platt 1999):
on validation scores that separate the classes, 0/1 targets have no finite optimum, and the fit
stopped wherever its solver did (a slope of 680; ``T`` at its lower bound).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.linear_model import LogisticRegression

from pneumolab.results import Platt

EPS = 1e-7
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def to_logits(prob: np.ndarray) -> np.ndarray:
    """Logits of probabilities clipped to ``[EPS, 1 - EPS]`` (saturated fp32 sigmoids stay finite)."""
    return logit(np.clip(np.asarray(prob, dtype=float), EPS, 1 - EPS))


def nll(y_true: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy of labels given logits (numerically stable)."""
    y_true = np.asarray(y_true, dtype=float)
    return float(np.mean(np.logaddexp(0.0, logits) - y_true * logits))


def platt_targets(y_true: np.ndarray) -> np.ndarray:
    """Platt's smoothed targets: ``(N+ + 1) / (N+ + 2)`` for positives, ``1 / (N- + 2)`` for
    negatives (a finite optimum even where the scores separate the classes)."""
    y_true = np.asarray(y_true, dtype=int)
    positives, negatives = int(y_true.sum()), int((1 - y_true).sum())
    return np.where(y_true == 1, (positives + 1) / (positives + 2), 1 / (negatives + 2))


def fit_temperature(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The temperature ``T`` in [0.05, 20] minimising the log-loss of ``sigmoid(logit(prob) / T)``
    against :func:`platt_targets`."""
    logits, targets = to_logits(prob), platt_targets(y_true)
    result = minimize_scalar(
        lambda log_t: nll(targets, logits / math.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(math.exp(result.x))


def at_bound(temperature: float) -> bool:
    """Whether a fitted ``temperature`` sits within 2% of an end of its search range (the
    validation scores wanted a sharper or softer map than it allows; the bounded search stops
    just short of the end)."""
    return any(math.isclose(math.log(temperature), end, abs_tol=0.02) for end in LOG_T_BOUNDS)


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``sigmoid(logit(prob) / T)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return expit(to_logits(prob) / temperature)


def fit_platt(y_true: np.ndarray, prob: np.ndarray) -> Platt:
    """``slope`` and ``intercept`` of ``sigmoid(slope * logit(prob) + intercept)``, by
    (practically unregularised) logistic regression of :func:`platt_targets` on the validation
    logits (each image weighted once as a positive by its target, once as a negative by the
    rest). The slope may come out at or below 0 (scores that rank the classes backwards, or
    constant ones): :class:`~pneumolab.results.DecisionRule` keeps no such map."""
    logits, targets = to_logits(prob)[:, None], platt_targets(y_true)
    model = LogisticRegression(C=1e6).fit(
        np.concatenate([logits, logits]),
        np.repeat([1, 0], len(targets)),
        sample_weight=np.concatenate([targets, 1 - targets]),
    )
    return Platt(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))


def apply_platt(prob: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Platt-scaled probabilities ``sigmoid(slope * logit(prob) + intercept)``."""
    return expit(slope * to_logits(prob) + intercept)
