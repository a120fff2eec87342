"""Cheap checks of an image before the network sees it, and the typed outcome every check shares."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_SIDE = 32
"""Smallest accepted side in pixels; below it there is no chest anatomy left to judge."""
MAX_ASPECT = 4.0
"""Largest accepted ratio of the long to the short side (the original Kermany files reach ~3.2)."""
MIN_INTENSITY_SPREAD = 8
"""Smallest accepted spread (gray levels, 8-bit) between the 1st and 99th percentile."""
MAX_COLOURED_SHARE = 0.1
"""Largest accepted share of clearly coloured pixels (:data:`pneumolab.data.colour.COLOURED_CHROMA`):
coloured annotations on an X-ray (a ruler, a marker) stay well below it; every image of the
shared train/val copies and originals has none."""
MIN_POLARITY = -0.1
"""Lowest accepted :func:`polarity`. All 5,292 X-rays of the shared train/val copies and
full-resolution originals score above -0.02 at 160 px (1st percentile 0.34), and all but 0.15%
of their negatives below -0.1 (benchmarks/README.md, "Inverted images")."""


@dataclass(frozen=True)
class ScopeChecks:
    """What the checks found: ``reasons`` put the input out of scope, ``warnings`` do not."""

    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    """The DICOM header's scope-relevant tags, as found (empty for other files)."""

    def __add__(self, other: ScopeChecks) -> ScopeChecks:
        return ScopeChecks(
            self.reasons + other.reasons, self.warnings + other.warnings, self.tags | other.tags
        )


def polarity(pixels: np.ndarray) -> float:
    """How much brighter the middle of the chest is than the lung fields beside it, in standard
    deviations of the image: the mean of a central vertical band (43-57% of the width:
    mediastinum and spine) minus that of the bands at 15-35% and 65-85% of the width (the lungs),
    over the middle 40% of the height. Positive on a chest X-ray, negative on its negative."""
    image = np.asarray(pixels, dtype=np.float64)
    height, width = image.shape[-2:]
    image = image.reshape(height, width)
    rows = image[int(0.3 * height) : int(0.7 * height)]

    def band(start: float, stop: float) -> np.ndarray:
        return rows[:, int(start * width) : int(stop * width)]

    lungs = np.concatenate([band(0.15, 0.35).ravel(), band(0.65, 0.85).ravel()])
    return float((band(0.43, 0.57).mean() - lungs.mean()) / (image.std() + 1e-6))


def image_sanity(width: int, height: int, pixels: np.ndarray, coloured: float = 0.0) -> ScopeChecks:
    """Size, shape, colour, contrast and polarity of a decoded image (``pixels``: its uint8
    resized copy; ``coloured``: the share of clearly coloured pixels of the image it came from,
    :func:`~pneumolab.data.colour.colour_share_of`)."""
    reasons = []
    if coloured > MAX_COLOURED_SHARE:
        reasons.append(
            f"colour image: {coloured:.0%} of its pixels clearly coloured (an X-ray is gray: a "
            "photo, a tinted or false-colour export, or colours decoded wrongly)"
        )
    if min(width, height) < MIN_SIDE:
        reasons.append(
            f"image too small ({width}x{height} px, at least {MIN_SIDE} px a side expected)"
        )
    aspect = max(width, height) / max(min(width, height), 1)
    if aspect > MAX_ASPECT:
        reasons.append(
            f"absurd aspect ratio {aspect:.1f}:1 ({width}x{height} px, a chest X-ray is at most "
            f"{MAX_ASPECT:g}:1)"
        )
    low, high = np.percentile(pixels, [1, 99])
    if high - low < MIN_INTENSITY_SPREAD:
        kind = "empty image: nearly black" if high < MIN_INTENSITY_SPREAD else "constant image"
        reasons.append(
            f"{kind}: gray levels span {high - low:.0f} of 255 between the 1st and 99th percentile"
        )
    elif (score := polarity(pixels)) < MIN_POLARITY:
        # the check measures a dark middle, which a negative has, and so may a rotated or
        # cropped X-ray or a photo: the reason names what was seen and what it may mean
        reasons.append(
            f"middle darker than its sides: a negative (inverted X-ray), or not a centred "
            f"frontal chest X-ray (rotated, cropped, not an X-ray) (polarity {score:.2f} < "
            f"{MIN_POLARITY:g}: a frontal chest X-ray shows mediastinum and spine brighter "
            "than the lungs)"
        )
    return ScopeChecks(tuple(reasons))
