"""One image's answer, with the scope gate's verdict folded in."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pneumolab.scope.checks import ScopeChecks
from pneumolab.scope.ood import MAX_FLAGGED_VALIDATION

OUT_OF_SCOPE_LABEL = "OUT_OF_SCOPE"
"""The label of an input the scope gate flagged (unless the predictor keeps class labels)."""
NOT_A_NUMBER = "the model's output is not a finite number (no class can be given)"
"""The reason (and, in a results file, the error) of an image whose score is not a number."""


@dataclass(frozen=True)
class Prediction:
    """One image's result: probability of pneumonia, the label at the run's threshold, and
    whether the input is within what the model was trained on (``in_scope``, with ``reasons``).

    ``label`` is ``OUT_OF_SCOPE`` for a flagged input unless the predictor was loaded with
    ``scope_verdict=False``; the probability is always given. ``warnings`` (e.g. an adult's
    age) do not make an input out of scope. ``ood_score`` and ``ood_threshold`` are None for a
    run without an OOD model.
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
) -> Prediction:
    """The prediction for one image: its class at ``threshold``, or ``OUT_OF_SCOPE`` when a
    check (``checks`` or the OOD score) flagged it and ``scope_verdict`` is on, or the network's
    output is not a number (NaN is below every threshold: it was a confident NORMAL)."""
    unscored = not math.isfinite(probability)
    reasons = checks.reasons + ood_reason(ood_score, ood_threshold)
    if unscored:
        reasons += (NOT_A_NUMBER,)
    label = class_names[int(float(probability) >= threshold)]  # float64, as the metrics compare
    if reasons and (scope_verdict or unscored):
        label = OUT_OF_SCOPE_LABEL
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
    )
