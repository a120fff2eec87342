"""How coloured an image is before it becomes gray: an X-ray has no colour, so a tinted or
false-colour export, a photo or colours decoded wrongly (a YCCK JPEG read as CMYK) show as
many clearly coloured pixels, which the scope checks read (:mod:`pneumolab.scope.checks`)."""

from __future__ import annotations

import numpy as np
from PIL import Image

COLOUR_SHARE = "pneumolab.colour_share"
"""Key of ``Image.info`` where the grayscale conversion keeps :func:`coloured_share` of the
colour image it came from (absent: the source had no colour channels)."""
COLOURED_CHROMA = 24.0
"""Chroma (the larger of \\|Cb\\| and \\|Cr\\| of JPEG's YCbCr, on the 0..255 scale) above which a
pixel counts as clearly coloured: a gray image's JPEG noise stays within a few levels, a
colour cast over a whole image (a photo of a screen) mostly below it."""
SAMPLE_SIDE = 64
"""The colour is judged on a copy reduced to about this many pixels on its shorter side."""

_CB = np.array([-0.168736, -0.331264, 0.5], dtype=np.float32)
_CR = np.array([0.5, -0.418688, -0.081312], dtype=np.float32)


def coloured_share(rgb: np.ndarray) -> float:
    """Share of the pixels of an ``(H, W, 3)`` RGB array (0..255 scale) whose chroma is over
    :data:`COLOURED_CHROMA`: 0 for a gray image stored as RGB."""
    pixels = np.asarray(rgb, dtype=np.float32).reshape(-1, 3)
    if not len(pixels):
        return 0.0
    chroma = np.maximum(np.abs(pixels @ _CB), np.abs(pixels @ _CR))
    return float(np.mean(chroma > COLOURED_CHROMA))


def image_coloured_share(image: Image.Image) -> float:
    """:func:`coloured_share` of a colour PIL image (RGB, YCbCr, CMYK, palette...), judged on a
    copy reduced to about :data:`SAMPLE_SIDE` pixels on its shorter side."""
    colour = image if image.mode in ("RGB", "YCbCr") else image.convert("RGB")
    factor = max(1, min(colour.size) // SAMPLE_SIDE)
    small = colour.reduce(factor) if factor > 1 else colour
    return coloured_share(np.asarray(small.convert("RGB")))


def colour_share_of(image: Image.Image) -> float:
    """The share of clearly coloured pixels the grayscale conversion recorded for ``image``
    (0 where its source had no colour)."""
    return float(image.info.get(COLOUR_SHARE, 0.0))
