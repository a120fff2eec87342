"""Robustness: metrics on a split under acquisition-like perturbations of its images.

A validation split carved from train is far easier than the official test split, which
differs in exposure, contrast and framing. Scoring the same images after such shifts shows
how much of a clean score survives them, and at the stored threshold, whether the errors
move towards false positives (the failure seen on this dataset's test split).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.inference.predictor import Backend
from pneumolab.results import PerturbationMetrics, RobustnessSummary

Perturbation = Callable[[torch.Tensor], torch.Tensor]


def _zoom(scale: float) -> Perturbation:
    """scale < 1: wider field of view (black border); scale > 1: tighter crop."""
    return lambda x: F.affine(x, angle=0.0, translate=[0, 0], scale=scale, shear=[0.0, 0.0])


def _noise(sigma: float) -> Perturbation:
    def add_noise(x: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        noise = torch.randn(x.shape, generator=generator) * (sigma * 255)
        return (x.float() + noise).clamp(0, 255).to(torch.uint8)

    return add_noise


PERTURBATIONS: dict[str, Perturbation] = {
    "clean": lambda x: x,
    "contrast_low": lambda x: F.adjust_contrast(x, 0.6),
    "contrast_high": lambda x: F.adjust_contrast(x, 1.5),
    "gamma_dark": lambda x: F.adjust_gamma(x, 1.6),
    "gamma_bright": lambda x: F.adjust_gamma(x, 0.6),
    "brightness_low": lambda x: F.adjust_brightness(x, 0.75),
    "brightness_high": lambda x: F.adjust_brightness(x, 1.25),
    "equalized": F.equalize,
    "zoom_out": _zoom(0.85),
    "zoom_in": _zoom(1.15),
    "rotate_10": lambda x: F.rotate(x, 10.0),
    "blur": lambda x: F.gaussian_blur(x, kernel_size=[7, 7], sigma=[1.5, 1.5]),
    "noise": _noise(0.04),
}
"""Fixed, deterministic perturbations of uint8 ``(N, 1, S, S)`` images, by name."""


def robustness_report(
    score: Backend, pixels: torch.Tensor, labels: np.ndarray, threshold: float
) -> dict[str, PerturbationMetrics]:
    """ROC AUC, accuracy, sensitivity and specificity at ``threshold`` under every perturbation
    of the raw pixels, scored by ``score`` (a Predictor's backend: it applies the run's intensity
    normalisation, and TTA or ONNX when the predictor uses them)."""
    report = {}
    for name, perturb in PERTURBATIONS.items():
        probs = score(perturb(pixels))
        metrics = binary_metrics(labels, probs, threshold)
        report[name] = PerturbationMetrics.model_validate(
            metrics.model_dump(include=set(PerturbationMetrics.model_fields))
        )
    return report


def summarize(report: dict[str, PerturbationMetrics]) -> RobustnessSummary:
    """Worst and mean figures over the perturbed (non-clean) conditions."""
    shifted = [v for k, v in report.items() if k != "clean"]
    return RobustnessSummary(
        worst_roc_auc=min(v.roc_auc for v in shifted),
        mean_roc_auc=float(np.mean([v.roc_auc for v in shifted])),
        worst_specificity=min(v.specificity for v in shifted),
        worst_sensitivity=min(v.sensitivity for v in shifted),
        mean_accuracy=float(np.mean([v.accuracy for v in shifted])),
    )
