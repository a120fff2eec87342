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


def image_sanity(width: int, height: int, pixels: np.ndarray) -> ScopeChecks:
    """Size, shape and contrast of a decoded image (``pixels``: its uint8 resized copy)."""
    reasons = []
    if min(width, height) < MIN_SIDE:
        reasons.append(
            f"image too small ({width}x{height} px; at least {MIN_SIDE} px a side expected)"
        )
    aspect = max(width, height) / max(min(width, height), 1)
    if aspect > MAX_ASPECT:
        reasons.append(
            f"absurd aspect ratio {aspect:.1f}:1 ({width}x{height} px; a chest X-ray is at most "
            f"{MAX_ASPECT:g}:1)"
        )
    low, high = np.percentile(pixels, [1, 99])
    if high - low < MIN_INTENSITY_SPREAD:
        kind = "empty image: nearly black" if high < MIN_INTENSITY_SPREAD else "constant image"
        reasons.append(
            f"{kind}: gray levels span {high - low:.0f} of 255 between the 1st and 99th percentile"
        )
    return ScopeChecks(tuple(reasons))
