"""Parity of a faster backend (INT8, OpenVINO) with the fp32 reference: the check that accepts it.

A backend is accepted when, on validation images, its ROC AUC is within ``MAX_AUC_CHANGE`` of
the fp32 model's and every label it flips at the stored threshold belongs to an image that the
fp32 model itself scores within ``LOGIT_MARGIN`` of the threshold (on the logit scale, so the
margin means the same at a threshold of 0.07 as at 0.5); likewise every input-scope verdict it
flips belongs to an image whose fp32 OOD score is within ``OOD_MARGIN`` of the OOD threshold.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from pneumolab.evaluation.calibration import to_logits
from pneumolab.evaluation.metrics import called_positive

MAX_AUC_CHANGE = 0.002
"""Largest |ROC AUC change| against fp32 that a backend may show."""
LOGIT_MARGIN = 0.5
"""A label may flip only for an image whose fp32 logit is this close to the threshold's logit
(0.5 is a probability band of about ±0.03 around a threshold of 0.07, ±0.12 around 0.5)."""


OOD_MARGIN = 0.25
"""A scope verdict may flip only for an image whose fp32 OOD score is within this fraction of the
OOD threshold (an INT8 export of the default model moved OOD scores by 3.6% at the median and
16% at most on 360 images)."""


@dataclass(frozen=True)
class OodScores:
    """The fp32 reference's and the candidate's OOD scores of the same images, and the gate's
    threshold."""

    reference: np.ndarray
    candidate: np.ndarray
    threshold: float


@dataclass(frozen=True)
class Parity:
    """How a backend's scores compare with the fp32 reference on the same images."""

    images: int
    reference_auc: float
    auc: float
    max_abs_diff: float
    label_flips: int
    flips_outside_margin: int
    logit_margin: float = LOGIT_MARGIN
    max_auc_change: float = MAX_AUC_CHANGE
    max_ood_change: float | None = None
    """Largest relative change of an OOD score (None: the run has no OOD model)."""
    scope_flips: int = 0
    scope_flips_outside_margin: int = 0
    ood_margin: float = OOD_MARGIN

    @property
    def auc_change(self) -> float:
        """ROC AUC of the checked model minus the fp32 reference's."""
        return self.auc - self.reference_auc

    @property
    def accepted(self) -> bool:
        """Within the AUC limit, and no label or scope flip outside its margin."""
        return (
            abs(self.auc_change) <= self.max_auc_change
            and self.flips_outside_margin == 0
            and self.scope_flips_outside_margin == 0
        )

    def to_dict(self) -> dict[str, float | int | bool]:
        """Every field, with the change and the verdict (for meta.json)."""
        return asdict(self) | {"auc_change": self.auc_change, "accepted": self.accepted}

    def summary(self) -> str:
        """One line for the command's output."""
        scope = (
            ""
            if self.max_ood_change is None
            else f"; OOD scores changed by {self.max_ood_change:.1%} at most, {self.scope_flips} "
            f"scope verdict(s) flipped, {self.scope_flips_outside_margin} of them outside "
            f"±{self.ood_margin:.0%} of the OOD threshold"
        )
        return (
            f"{self.images} validation images: ROC AUC {self.auc:.4f} vs fp32 "
            f"{self.reference_auc:.4f} (change {self.auc_change:+.4f}, limit "
            f"±{self.max_auc_change}), max |Δprob| {self.max_abs_diff:.1e}, {self.label_flips} "
            f"label(s) flipped at the threshold, {self.flips_outside_margin} of them outside "
            f"±{self.logit_margin} logit of it{scope}"
        )


def score_parity(
    reference: np.ndarray,
    candidate: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    logit_margin: float = LOGIT_MARGIN,
    ood: OodScores | None = None,
) -> Parity:
    """Compare ``candidate`` probabilities (and ``ood`` scores, where the run has an OOD model)
    with the fp32 ``reference`` ones on labelled images."""
    reference, candidate = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    flipped = called_positive(candidate, threshold) != called_positive(reference, threshold)
    distance = np.abs(to_logits(reference) - to_logits(np.array(threshold)))
    return Parity(
        images=len(reference),
        reference_auc=float(roc_auc_score(labels, reference)),
        auc=float(roc_auc_score(labels, candidate)),
        max_abs_diff=float(np.abs(candidate - reference).max()),
        label_flips=int(flipped.sum()),
        flips_outside_margin=int((flipped & (distance > logit_margin)).sum()),
        logit_margin=logit_margin,
        **(_scope_parity(ood) if ood is not None else {}),
    )


def _scope_parity(ood: OodScores) -> dict[str, Any]:
    """The OOD fields of :class:`Parity` (a score above the threshold is out of scope)."""
    reference = np.asarray(ood.reference, np.float64)
    candidate = np.asarray(ood.candidate, np.float64)
    flipped = (candidate > ood.threshold) != (reference > ood.threshold)
    far = np.abs(reference - ood.threshold) > OOD_MARGIN * ood.threshold
    return {
        "max_ood_change": float(np.max(np.abs(candidate - reference) / reference)),
        "scope_flips": int(flipped.sum()),
        "scope_flips_outside_margin": int((flipped & far).sum()),
    }
