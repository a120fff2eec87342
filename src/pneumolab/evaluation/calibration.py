"""Calibration fitted on validation (temperature and Platt scaling), and the reliability diagram.

Temperature scaling divides the model's logit by one scalar ``T > 0`` chosen to minimise the
validation log-loss (Guo et al. 2017). It changes no ranking (ROC AUC is unchanged); ``T > 1``
softens an overconfident model. Platt scaling fits a slope *and an intercept* on the logit
(logistic regression), so it can also remove a constant shift, such as the one class-weighted
training puts towards the rarer class. Both work on stored probabilities, converted to logits.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.calibration import calibration_curve
from sklearn.linear_model import LogisticRegression

from pneumolab.evaluation.metrics import ECE_BINS, expected_calibration_error
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


def fit_temperature(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The temperature ``T`` in [0.05, 20] minimising the log-loss of ``sigmoid(logit(prob) / T)``."""
    logits = to_logits(prob)
    result = minimize_scalar(
        lambda log_t: nll(y_true, logits / math.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded"
    )
    return float(math.exp(result.x))


def apply_temperature(prob: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled probabilities ``sigmoid(logit(prob) / T)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return expit(to_logits(prob) / temperature)


def fit_platt(y_true: np.ndarray, prob: np.ndarray) -> Platt:
    """``slope`` and ``intercept`` of ``sigmoid(slope * logit(prob) + intercept)``, by
    (practically unregularised) logistic regression on the validation logits."""
    model = LogisticRegression(C=1e6).fit(to_logits(prob)[:, None], np.asarray(y_true, dtype=int))
    return Platt(slope=float(model.coef_[0, 0]), intercept=float(model.intercept_[0]))


def apply_platt(prob: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Platt-scaled probabilities ``sigmoid(slope * logit(prob) + intercept)``."""
    return expit(slope * to_logits(prob) + intercept)


def save_reliability_diagram(
    y_true: np.ndarray, curves: dict[str, np.ndarray], path: Path, title: str = ""
) -> Path:
    """Observed pneumonia rate against mean predicted probability in 10 equal-width bins, one line
    per entry of ``curves`` (label -> probabilities), with each curve's ECE in the legend."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfectly calibrated")
    for label, prob in curves.items():
        observed, predicted = calibration_curve(y_true, prob, n_bins=ECE_BINS, strategy="uniform")
        ece = expected_calibration_error(y_true, prob)
        ax.plot(predicted, observed, "o-", label=f"{label} (ECE {ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction of pneumonia")
    ax.set(xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
