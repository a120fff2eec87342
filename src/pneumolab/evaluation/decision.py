"""A trained model's decision rule, chosen on its validation scores: operating points (the first,
at the target sensitivity, is the default threshold), calibration maps (temperature, Platt) and
validation metrics."""

from __future__ import annotations

import logging

import numpy as np

from pneumolab.evaluation.calibration import fit_platt, fit_temperature
from pneumolab.evaluation.metrics import binary_metrics, threshold_metrics
from pneumolab.evaluation.operating_points import choose_operating_points
from pneumolab.results import DecisionRule

log = logging.getLogger(__name__)


def decision_rule(
    labels: np.ndarray,
    probs: np.ndarray,
    source: str,
    target_sensitivity: float,
    tta_probs: np.ndarray | None = None,
) -> DecisionRule:
    """How scores become labels, chosen on validation ``probs``; ``source`` names the split.
    ``tta_probs`` (the same images scored with test-time augmentation) get their own threshold
    by the default rule. A Platt map that does not increase with the score is refused, with a
    warning (:attr:`DecisionRule.platt_refused`)."""
    points = choose_operating_points(labels, probs, source, target_sensitivity)
    default = next(iter(points))  # the target-sensitivity point
    threshold = points[default].threshold
    tta_threshold = None
    if tta_probs is not None:
        tta_source = f"{source}, test-time augmented"
        tta_points = choose_operating_points(labels, tta_probs, tta_source, target_sensitivity)
        tta_threshold = tta_points[default].threshold
    rule = DecisionRule(
        threshold=threshold,
        threshold_rule=f"highest threshold with validation sensitivity >= {target_sensitivity}",
        default_operating_point=default,
        operating_points={
            name: p.model_copy(
                update={"val_metrics": threshold_metrics(labels, probs, p.threshold)}
            )
            for name, p in points.items()
        },
        temperature=fit_temperature(labels, probs),
        platt=fit_platt(labels, probs),
        val_metrics=binary_metrics(labels, probs, threshold),
        tta_threshold=tta_threshold,
    )
    if rule.platt_refused:
        log.warning(
            "%s: %s (probabilities are reported raw either way)", source, rule.platt_refused
        )
    return rule
