"""Image-content out-of-distribution score: Mahalanobis distance of the network's mid-level features.

This module needs no PyTorch (an ONNX predictor reads the threshold here and gets the score from
the graph); the scorer itself is :class:`pneumolab.scope.mahalanobis.MahalanobisScore`.

The score of an image is its smallest squared Mahalanobis distance to the training-set class
means, with one covariance shared by the classes (Lee et al. 2018), estimated with Ledoit-Wolf
shrinkage (scikit-learn). The features are the mean activations of the stage at 1/16 of the
input resolution (96 for MobileNetV2; the pooled features for networks without intermediate
stages), taken from the same forward pass as the prediction, then one extra ``(D, D)`` matrix
product. The class means and covariance are fitted on training images plus an augmented copy of
each (the ``acquisition`` training augmentation), and the threshold on validation images plus an
augmented copy, so that another site's framing, resolution and exposure count as in scope while
photos, other modalities and documents do not. The pooled features the classifier reads, and
energy and maximum-probability scores from the logits, were measured against it
(``benchmarks/ood_benchmark.py``, ``benchmarks/ood_descriptors.py``) and lost.

A run keeps its OOD model in ``RUN_DIR/ood.safetensors``: the whitening and centres (none for
an ensemble, whose members score), the validation scores, and the threshold chosen on them.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import load_file, save

from pneumolab.errors import RunDirError
from pneumolab.files import write_bytes_atomically

if TYPE_CHECKING:
    from pneumolab.scope.mahalanobis import MahalanobisScore

MAX_FLAGGED_VALIDATION = 0.01
"""Largest share of in-distribution validation images the threshold may flag."""
METHOD = "mahalanobis_stage_mean"
LEGACY_METHODS = ("mahalanobis",)
"""Scores of older pneumolab versions (pooled features): not comparable, to be refitted."""
ENSEMBLE_METHOD = "ensemble_mean"
"""An ensemble's score: the mean of its members' Mahalanobis scores."""


def validation_threshold(
    val_scores: np.ndarray, max_flagged: float = MAX_FLAGGED_VALIDATION
) -> float:
    """The lowest threshold that flags (score > threshold) at most ``max_flagged`` of validation:
    the score with ``floor(max_flagged * n)`` scores above its position."""
    scores = np.sort(np.asarray(val_scores, dtype=np.float64))
    flagged = math.floor(max_flagged * len(scores) + 1e-9)  # 0.01 * 100 is 1, not 0.99999
    return float(scores[max(0, len(scores) - 1 - flagged)])


@dataclass
class OodModel:
    """A run's OOD model: the whitening and class centres of the Mahalanobis score (None for an
    ensemble, whose members score), the validation scores and the threshold chosen on them."""

    method: str
    whitening: np.ndarray | None
    centers: np.ndarray | None
    val_scores: np.ndarray
    threshold: float
    provenance: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_validation(
        cls,
        method: str,
        scorer: MahalanobisScore | None,
        val_scores: np.ndarray,
        provenance: dict[str, str],
    ) -> OodModel:
        """Choose the threshold on ``val_scores`` (at most 1% flagged)."""
        val_scores = np.ascontiguousarray(val_scores, dtype=np.float32)
        whitening = None if scorer is None else scorer.whitening.cpu().numpy()
        centers = None if scorer is None else scorer.centers.cpu().numpy()
        threshold = validation_threshold(val_scores)
        return cls(method, whitening, centers, val_scores, threshold, provenance)

    @property
    def scorer(self) -> MahalanobisScore | None:
        """The PyTorch scorer (imports torch), None for an ensemble."""
        if self.whitening is None or self.centers is None:
            return None
        import torch

        from pneumolab.scope.mahalanobis import MahalanobisScore

        return MahalanobisScore(torch.from_numpy(self.whitening), torch.from_numpy(self.centers))

    @property
    def clean_val_scores(self) -> np.ndarray:
        """The scores of the validation images themselves: the first half of ``val_scores``,
        whose second half scores their augmented copies."""
        return self.val_scores[: len(self.val_scores) // 2]

    @property
    def val_flagged_fraction(self) -> float:
        """Share of the validation images scored above the threshold."""
        return float(np.mean(self.val_scores > self.threshold)) if len(self.val_scores) else 0.0

    def save(self, path: Path) -> None:
        """Write ``path`` (safetensors: arrays plus string metadata)."""
        arrays = {"val_scores": self.val_scores}
        if self.whitening is not None and self.centers is not None:
            arrays |= {"whitening": self.whitening, "centers": self.centers}
        metadata = {
            "method": self.method,
            "threshold": repr(self.threshold),
            "max_flagged_validation": repr(MAX_FLAGGED_VALIDATION),
            "val_flagged_fraction": repr(self.val_flagged_fraction),
            "provenance": json.dumps(self.provenance),
        }
        contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        write_bytes_atomically(path, save(contiguous, metadata=metadata))

    @classmethod
    def load(cls, path: Path) -> OodModel:
        """Read a file written by :meth:`save`; RunDirError naming it when it is not one."""
        try:
            with safe_open(path, "np") as f:
                metadata = f.metadata() or {}
            arrays = load_file(path)
            return cls(
                metadata["method"],
                arrays.get("whitening"),
                arrays.get("centers"),
                arrays["val_scores"],
                float(metadata["threshold"]),
                json.loads(metadata.get("provenance", "{}")),
            )
        except (OSError, KeyError, ValueError, SafetensorError) as exc:
            raise RunDirError(f"{path}: not a pneumolab OOD model ({exc})") from None
