"""One image's answer, with the scope gate's verdict folded in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_calls
from pneumolab.scope.checks import ScopeChecks
from pneumolab.scope.ood import MAX_FLAGGED_VALIDATION

OUT_OF_SCOPE_LABEL = "OUT_OF_SCOPE"
"""The label of an input the scope gate flagged (unless the predictor keeps class labels)."""
NOT_A_NUMBER = "the model's output is not a finite number (no class can be given)"
"""The reason (and, in a results file, the error) of an image whose score is not a number."""
CLASS_PROBABILITY_FIELDS = tuple(f"p_{name.lower()}" for name in SUBTYPE_NAMES)
"""A three-class run's class probabilities, one field per class of SUBTYPE_NAMES, in order."""
SUBTYPE_FIELDS = ("subtype", *CLASS_PROBABILITY_FIELDS)
"""A three-class run's subtype call and class probabilities (``Prediction``'s last fields)."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: probability of pneumonia, the label at the run's threshold, and
    whether the input is within what the model was trained on (``in_scope``, with ``reasons``).

    ``label`` is ``OUT_OF_SCOPE`` for a flagged input unless the predictor was loaded with
    ``scope_verdict=False``; the probability is always given. ``warnings`` (e.g. an adult's
    age) do not make an input out of scope. ``ood_score`` and ``ood_threshold`` are None for a
    run without an OOD model.

    A three-class run scored by its PyTorch network also gives ``p_normal``, ``p_bacterial``
    and ``p_viral`` (softmax of its three logits; with TTA, its mean over the views) and, for an
    in-scope image called ``PNEUMONIA``, its ``subtype``: the more likely of ``BACTERIAL`` and
    ``VIRAL``. All four are None otherwise (a binary run, a backend that gives no class logits).
    """

    source: str
    probability: float
    label: str
    threshold: float
    in_scope: bool = True
    ood_score: float | None = None
    ood_threshold: float | None = None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    subtype: str | None = None
    p_normal: float | None = None
    p_bacterial: float | None = None
    p_viral: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists; a probability that is not a number as None)."""
        probability = self.probability if math.isfinite(self.probability) else None
        return asdict(self) | {
            "probability": probability,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
        }


def ood_reason(ood_score: float, ood_threshold: float | None) -> tuple[str, ...]:
    """The OOD check's reason, when the score is over the threshold, or missing where the run
    has a threshold (an ensemble member without a current OOD model scores none)."""
    if ood_threshold is None:
        return ()
    if not math.isfinite(ood_score):
        return (
            "OOD score unavailable (not a finite number, or in an ensemble a member without a "
            "current OOD model: `pneumolab fit-ood` the ensemble)",  # no '; ': CSV joins by it
        )
    if ood_score <= ood_threshold:
        return ()
    return (
        f"image content unlike the training X-rays (OOD score {ood_score:.1f} > threshold "
        f"{ood_threshold:.1f}, chosen to flag at most {MAX_FLAGGED_VALIDATION:.0%} of the "
        "validation X-rays and their augmented copies)",
    )


def gated_prediction(
    source: str,
    probability: float,
    threshold: float,
    class_names: Sequence[str],
    checks: ScopeChecks,
    *,
    ood_score: float,
    ood_threshold: float | None,
    scope_verdict: bool,
    class_probs: np.ndarray | None = None,
) -> Prediction:
    """The prediction for one image: its class at ``threshold``, or ``OUT_OF_SCOPE`` when a
    check (``checks`` or the OOD score) flagged it and ``scope_verdict`` is on, or the network's
    output is not a number (NaN is below every threshold: it was a confident NORMAL).
    ``class_probs``: a three-class network's three probabilities, given with the subtype call
    of an in-scope image called pneumonia (:func:`subtype_calls`, the evaluation's rule)."""
    unscored = not math.isfinite(probability)
    reasons = checks.reasons + ood_reason(ood_score, ood_threshold)
    if unscored:
        reasons += (NOT_A_NUMBER,)
    pneumonia = bool(float(probability) >= threshold)  # float64, as the metrics compare
    label = class_names[int(pneumonia)]
    if reasons and (scope_verdict or unscored):
        label = OUT_OF_SCOPE_LABEL
    subtypes: dict[str, Any] = {}
    if class_probs is not None and np.isfinite(class_probs).all():
        subtypes = dict(zip(CLASS_PROBABILITY_FIELDS, map(float, class_probs), strict=True))
        call = int(subtype_calls(class_probs[None], np.array([pneumonia and not reasons]))[0])
        subtypes["subtype"] = SUBTYPE_NAMES[call] if call else None
    return Prediction(
        source,
        float(probability),
        label,
        threshold,
        in_scope=not reasons,
        ood_score=None if math.isnan(ood_score) else float(ood_score),
        ood_threshold=ood_threshold,
        reasons=reasons,
        warnings=checks.warnings,
        **subtypes,
    )
