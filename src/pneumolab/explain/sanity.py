"""Saliency sanity check: does the Grad-CAM heat sit on the chest, or on borders and corners?

A chest X-ray classifier should look at the lungs. Heat concentrated in the image border or
corners is a warning of shortcut learning (text markers such as "R"/"L", rulers, collimation
edges, scanner-specific borders). Regions, on the ``S x S`` model input:

- **centre**: the central 60% x 60% box (rows and columns 20%-80%). At the default resize (the
  whole film squashed to a square) it holds both lung fields and the heart in a frontal view,
  and little else.
- **border**: the outer 10% band on every side, without its four corners.
- **corners**: the four 10% x 10% corner boxes, where markers and labels are usually printed.
- **ring**: the rest, between the outer band and the centre box (28% of the area).

Shares are fractions of an image's total heat: of the sum of its unscaled map
(:attr:`~pneumolab.explain.gradcam.GradCamMaps.raw`), not of the map ``explain`` shows, which
grad-cam stretches per image from the map's minimum (the shares were once taken from that
stretched map: its floor, subtracted first, moved them by an amount that varied from image to
image). The outer band (border + corners) is 36% of the area, so heat spread evenly gives an
edge share of 0.36; an image is flagged when its edge share exceeds :data:`EDGE_FLAG_LEVEL` (0.5: clearly more than its area), and the model is ``flagged``
when at least :data:`FLAG_FRACTION` of the images with heat are. A map with no heat at all
(Grad-CAM keeps only what raised the score: an image the model calls NORMAL often has none) is
counted as ``empty_maps`` and left out of the figures: counted as 0 everywhere, such maps
lowered every share and the flagged fraction. Check images the model calls pneumonia: the
pneumonia logit's faint leftovers on a NORMAL image, stretched to full scale, tend to sit on
the edge.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import nn

from pneumolab.explain.gradcam import find_target_layer, gradcam_maps
from pneumolab.models.classifier import XrayClassifier

CENTRE_MARGIN = 0.2
"""The centre box leaves this fraction out on each side (central 60% x 60%)."""
EDGE = 0.1
"""Width of the border band and side of the corner boxes, as a fraction of the image side."""
EDGE_FLAG_LEVEL = 0.5
"""An image is flagged when more than this share of its heat lies in the outer band."""
FLAG_FRACTION = 0.25
"""The model is flagged when at least this fraction of the images is."""


def region_masks(size: int) -> dict[str, np.ndarray]:
    """Boolean ``(size, size)`` masks of the ``centre``, ``border``, ``corners`` and ``ring``
    regions, which partition the map (so a map's shares sum to 1, 0 for an empty map)."""
    index = np.arange(size)
    low, high = round(CENTRE_MARGIN * size), size - round(CENTRE_MARGIN * size)
    edge = max(1, round(EDGE * size))
    inner = (index >= low) & (index < high)
    outer = (index < edge) | (index >= size - edge)
    centre = inner[:, None] & inner[None, :]
    corners = outer[:, None] & outer[None, :]
    band = outer[:, None] | outer[None, :]
    return {
        "centre": centre,
        "border": band & ~corners,
        "corners": corners,
        "ring": ~centre & ~band,
    }


def heat_shares(heat: np.ndarray) -> dict[str, float]:
    """Share of the total heat of a square map in each region (0 everywhere for an empty map)."""
    total = float(heat.sum())
    masks = region_masks(heat.shape[-1])
    if total <= 0:
        return dict.fromkeys(masks, 0.0)
    return {name: float(heat[mask].sum()) / total for name, mask in masks.items()}


@dataclass(frozen=True)
class SaliencySanity:
    """Region shares of Grad-CAM heat over a set of images, and the shortcut verdict.

    ``per_image`` holds every image's centre/border/corners/ring shares; the figures count only
    the ``n`` maps with heat (``empty_maps`` apart); ``flagged`` (possible shortcut learning:
    heat on borders, corners, text markers) when at least ``flag_fraction`` of them put more
    than ``edge_flag_level`` of their heat on the outer band."""

    n: int
    empty_maps: int
    mean_centre_share: float
    median_centre_share: float
    mean_border_share: float
    mean_corner_share: float
    fraction_flagged: float
    edge_flag_level: float
    flag_fraction: float
    flagged: bool
    per_image: list[dict[str, float]]

    def figures(self) -> dict[str, float]:
        """Every field but ``flagged`` and ``per_image``, by name, in declaration order."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("flagged", "per_image")
        }


def summarize_shares(per_image: list[dict[str, float]]) -> SaliencySanity:
    """The summary and verdict of per-image region shares; the maps without heat (every share
    0) are counted as ``empty_maps``, not in ``n`` or the figures."""
    with_heat = [shares for shares in per_image if sum(shares.values()) > 0]
    centre = np.array([s["centre"] for s in with_heat], dtype=float)
    border = np.array([s["border"] for s in with_heat], dtype=float)
    corners = np.array([s["corners"] for s in with_heat], dtype=float)
    edge = border + corners
    fraction = float(np.mean(edge > EDGE_FLAG_LEVEL)) if len(edge) else 0.0
    return SaliencySanity(
        n=len(with_heat),
        empty_maps=len(per_image) - len(with_heat),
        mean_centre_share=float(centre.mean()) if len(centre) else 0.0,
        median_centre_share=float(np.median(centre)) if len(centre) else 0.0,
        mean_border_share=float(border.mean()) if len(border) else 0.0,
        mean_corner_share=float(corners.mean()) if len(corners) else 0.0,
        fraction_flagged=fraction,
        edge_flag_level=EDGE_FLAG_LEVEL,
        flag_fraction=FLAG_FRACTION,
        flagged=bool(len(edge) and fraction >= FLAG_FRACTION),
        per_image=per_image,
    )


def saliency_sanity(
    model: XrayClassifier,
    pixels: torch.Tensor,
    intensity: str,
    layer: nn.Module | None = None,
) -> SaliencySanity:
    """Region shares of the pneumonia logit's Grad-CAM on uint8 ``(N, 1, S, S)`` images (give
    images the model calls pneumonia), summarised by :func:`summarize_shares`: shares of each
    unscaled map (:attr:`~pneumolab.explain.gradcam.GradCamMaps.raw`)."""
    if layer is None and len(pixels):
        layer = find_target_layer(model, int(pixels.shape[-1]))
    per_image = [
        heat_shares(gradcam_maps(model, image[None], intensity, layer).raw) for image in pixels
    ]
    return summarize_shares(per_image)
