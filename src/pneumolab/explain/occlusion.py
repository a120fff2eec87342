"""Border occlusion: does the model need the image border, or the chest?

The Grad-CAM check (:mod:`pneumolab.explain.sanity`) reads where the heat lies, but a coarse map
(5 x 5 at a 160 px EfficientNet's last layer) cannot place a border shortcut: a model made to
read only one 20% corner still had most of its heat near the centre and was not flagged. Scoring
the split again with the outer band black, and with only that band kept, asks the model itself:
a model that reads the chest keeps its ROC AUC in the first case and loses it in the second.

The band is blacked out in the image the model sees, after intensity normalisation: blacked out
before it, global equalisation remapped the whole image around the new black (the chest of 20
NORMAL images shifted by 28.9 grey levels on average at 160 px; CLAHE by 5.0), so the loss mixed
the border's evidence with a change of the chest's grey levels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pneumolab.data.transforms import normalize_intensity

BAND = 0.1
"""Width of the occluded outer band, as a fraction of the image side (as the Grad-CAM check's)."""
AUC_LOSS_FLAG = 0.05
"""Flagged when blacking out the band costs more ROC AUC than this."""

NormalisedScorer = Callable[[torch.Tensor], np.ndarray]
"""Probabilities ``(N,)`` of uint8 ``(N, 1, S, S)`` pixels whose intensity normalisation is
already applied (say :func:`~pneumolab.inference.torch_scoring.predict_pixels` with its
default ``intensity="none"``): it must not normalise them again."""


@dataclass(frozen=True)
class BorderOcclusion:
    """ROC AUC of one split scored as it is, with its outer band black, and with only the band.

    Only the first occlusion decides: a model that needs the border loses its ranking without
    it. The band alone is reported, not judged: at the default framing it holds the edges of
    the lung fields, so a model that reads the chest ranks above chance from it too (the
    MobileNetV2 160 px CLAHE default: 0.82 on validation, while the border black cost it
    0.0008; measured when the band was blacked out before normalisation)."""

    band_px: int
    clean_roc_auc: float
    border_black_roc_auc: float
    border_only_roc_auc: float

    @property
    def flagged(self) -> bool:
        """The model needs the border: its ROC AUC falls by more than :data:`AUC_LOSS_FLAG`
        without it."""
        return self.clean_roc_auc - self.border_black_roc_auc > AUC_LOSS_FLAG


def occlusions(pixels: torch.Tensor, band: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, 1, S, S)`` pixels with the outer ``band`` px black (0), and with all but that band
    black."""
    border_black = pixels.clone()
    border_black[..., :band, :] = border_black[..., -band:, :] = 0
    border_black[..., :, :band] = border_black[..., :, -band:] = 0
    border_only = pixels - border_black
    return border_black, border_only


def occluded_inputs(
    pixels: torch.Tensor, intensity: str, band: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Raw uint8 ``(N, 1, S, S)`` pixels as the model sees them (``intensity`` normalisation
    applied, as in training), then with the outer ``band`` px black and with only that band
    kept (:func:`occlusions` of the normalised pixels): the chest's grey levels are those of
    the clean input."""
    clean = normalize_intensity(pixels, intensity)
    return clean, *occlusions(clean, band)


def border_occlusion(
    score: NormalisedScorer, pixels: torch.Tensor, labels: np.ndarray, intensity: str
) -> BorderOcclusion:
    """Score ``pixels`` (raw uint8 ``(N, 1, S, S)``, both classes in ``labels``) clean and
    under both occlusions of the outer :data:`BAND`, occluded after ``intensity`` normalisation
    (:func:`occluded_inputs`); ``score`` takes the normalised pixels as they are."""
    if len(np.unique(labels)) < 2:
        raise ValueError("border occlusion needs images of both classes")
    band = max(1, round(BAND * pixels.shape[-1]))
    aucs = [
        float(roc_auc_score(labels, score(x))) for x in occluded_inputs(pixels, intensity, band)
    ]
    return BorderOcclusion(band, *aucs)
