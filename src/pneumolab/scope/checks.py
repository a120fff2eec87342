"""Cheap checks of an image before the network sees it, and the typed outcome every check shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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
FRAME_TOLERANCE = 6
"""Gray levels (8-bit) by which a pixel of a frame may differ from its edge's median."""
FRAME_LINE_SHARE = 0.97
"""Share of a line's pixels that must be within :data:`FRAME_TOLERANCE` of the edge's median
for the line to count as part of a uniform band (a burnt-in marker may sit in the band)."""
MAX_FRAME_SHARE = 0.37
"""Largest accepted :func:`frame_share`. Above the shared X-rays' frames (the 5,292 train/val
copies and full-resolution originals reach 0.20 at 160 px: black collimation and padding bands
of up to 12.5% of a side) and the widest field of view the ``acquisition`` augmentation trains
on (crops up to 145% of the area: a black frame of about 0.31), with a margin; below the black
frames that moved the default model's operating point (bars of 20% of the width on the left
and right, median share 0.39: specificity 1.000 to 0.770; 20% on four sides, 0.63: 0.702).
Frames of 10% on four sides (0.34, specificity 0.979) mostly pass (benchmarks/README.md,
"Framed images")."""
BRIGHT_FRAME = 128
"""Gray level from which a band counts as bright (white padding, unexposed film)."""
MAX_BRIGHT_FRAME_SHARE = 0.05
"""Largest accepted :func:`frame_share` of the bright bands alone: the shared X-rays' bright
bands are at most 2 px of 160 (1.25% of a side), and the default model, trained on none, lost
sensitivity under white letterbox bars of 10% of the height (0.951 to 0.888)."""
FRAME_REASON = "framed image"
"""How the frame check's reason begins."""


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


class Band(NamedTuple):
    """A uniform band along one edge of an image."""

    share: float
    """Its width, as a share of the side across it (0: no band)."""
    level: float
    """The median gray level of its outermost line."""


def frame_bands(pixels: np.ndarray) -> tuple[Band, Band, Band, Band]:
    """The uniform band along each edge (left, right, top, bottom): the lines parallel to that
    edge, counted inwards from it, up to the middle, while each has at least
    :data:`FRAME_LINE_SHARE` of its pixels within :data:`FRAME_TOLERANCE` gray levels of the
    median of the outermost line (any gray: black or white padding, a collimation band)."""
    image = np.asarray(pixels, dtype=np.int16)
    height, width = image.shape[-2:]
    image = image.reshape(height, width)

    def band(lines: np.ndarray, side: int) -> Band:
        level = float(np.median(lines[0]))

        def uniform(rows: np.ndarray) -> np.ndarray:
            near = np.abs(rows - level) <= FRAME_TOLERANCE
            return np.count_nonzero(near, axis=1) >= FRAME_LINE_SHARE * lines.shape[1]

        if not uniform(lines[:1])[0]:  # most images: no band, one line read
            return Band(0.0, level)
        inner = uniform(lines)
        return Band((len(inner) if inner.all() else int(inner.argmin())) / side, level)

    across, down = (width + 1) // 2, (height + 1) // 2
    return (
        band(image[:, :across].T, width),
        band(image[:, ::-1][:, :across].T, width),
        band(image[:down], height),
        band(image[::-1][:down], height),
    )


def frame_share(bands: Sequence[Band], bright: bool = False) -> float:
    """The share of the image's area covered by the (left, right, top, bottom) ``bands`` of
    :func:`frame_bands`; with ``bright``, by those of :data:`BRIGHT_FRAME` or brighter only."""
    left, right, top, bottom = (
        band.share if band.level >= BRIGHT_FRAME or not bright else 0.0 for band in bands
    )
    return 1.0 - max(0.0, 1.0 - left - right) * max(0.0, 1.0 - top - bottom)


def frame_reason(bands: Sequence[Band]) -> str | None:
    """The frame check's reason where the uniform ``bands`` (:func:`frame_bands`) cover more
    than :data:`MAX_FRAME_SHARE` of the image, or its bright bands more than
    :data:`MAX_BRIGHT_FRAME_SHARE`; else None."""
    share, bright = frame_share(bands), frame_share(bands, bright=True)
    if bright > MAX_BRIGHT_FRAME_SHARE:
        found, kind, limit, unseen = bright, "bright frame", MAX_BRIGHT_FRAME_SHARE, "none"
    elif share > MAX_FRAME_SHARE:
        found, kind, limit, unseen = share, "frame", MAX_FRAME_SHARE, "none this wide"
    else:
        return None
    return (
        f"{FRAME_REASON}: a uniform {kind} covers {found:.0%} of the image (at most {limit:.0%} "
        f"expected): crop it to the chest, as the model was trained on {unseen}"
    )


def inside_frame(pixels: np.ndarray, bands: Sequence[Band]) -> np.ndarray:
    """The 2-D part of ``pixels`` inside its (left, right, top, bottom) ``bands``."""
    image = np.asarray(pixels)
    height, width = image.shape[-2:]
    left, right, top, bottom = (band.share for band in bands)
    rows = slice(round(top * height), height - round(bottom * height))
    return image.reshape(height, width)[rows, round(left * width) : width - round(right * width)]


def image_sanity(width: int, height: int, pixels: np.ndarray, coloured: float = 0.0) -> ScopeChecks:
    """Size, shape, colour, contrast, frame and polarity of a decoded image (``pixels``: its uint8
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
    else:
        bands = frame_bands(pixels)
        framed = frame_reason(bands)
        if framed is not None:
            reasons.append(framed)
            # the polarity check reads fixed places of the chest, which a frame moves
            pixels = inside_frame(pixels, bands)
        # polarity's central band is 14% of the width: none left inside a frame of over 95%
        if min(pixels.shape[-2:]) >= 8 and (score := polarity(pixels)) < MIN_POLARITY:
            # the check measures a dark middle, which a negative has, and so may a rotated or
            # cropped X-ray or a photo: the reason names what was seen and what it may mean
            reasons.append(
                f"middle darker than its sides: a negative (inverted X-ray), or not a centred "
                f"frontal chest X-ray (rotated, cropped, not an X-ray) (polarity {score:.2f} < "
                f"{MIN_POLARITY:g}: a frontal chest X-ray shows mediastinum and spine brighter "
                "than the lungs)"
            )
    return ScopeChecks(tuple(reasons))
