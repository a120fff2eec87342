"""Intensity normalisation on uint8 NumPy pixels, for inference paths that do not load PyTorch.

The same result as :func:`pneumolab.data.transforms.normalize_intensity` (torchvision), bit for
bit (tested), so an ONNX backend can preprocess with NumPy alone. The methods
(:data:`pneumolab.choices.INTENSITIES`) apply to every image, in training and inference alike.

``equalize``: global histogram equalisation. Any monotonic change of exposure, contrast or
gamma leaves an image's equalised version (nearly) unchanged, so the model never sees those
acquisition differences at all.
``clahe``: contrast-limited adaptive histogram equalisation (OpenCV; 8 x 8 tiles, clip limit
2): equalises each region against its own neighbourhood, so local contrast (e.g. an opacity
against the lung field) is kept where one global mapping would flatten it.
"""

from __future__ import annotations

import numpy as np

from pneumolab.choices import INTENSITIES

CLAHE_CLIP_LIMIT = 2.0
CLAHE_TILES = (8, 8)
RECIPES = {
    "none": "nothing",
    "equalize": "global histogram equalisation of each image (PIL ImageOps.equalize)",
    "clahe": f"cv2.createCLAHE(clipLimit={CLAHE_CLIP_LIMIT}, tileGridSize={CLAHE_TILES}).apply "
    "on each image",
}
"""Each method in terms another runtime can reproduce (an ONNX export's metadata says it)."""


def equalize_array(pixels: np.ndarray) -> np.ndarray:
    """Histogram-equalise each ``(H, W)`` plane of uint8 ``(..., H, W)`` pixels.

    PIL's lookup table, as torchvision's ``equalize`` computes it: ``lut[k] = (cum[k-1] + step // 2)
    // step`` with ``step = (pixels not at the image's top value) // 255``; a plane with
    ``step == 0`` (one or almost one value) is returned unchanged.
    """
    planes = pixels.reshape(-1, pixels.shape[-2] * pixels.shape[-1])
    count, area = planes.shape
    offsets = (np.arange(count, dtype=np.int64) * 256)[:, None]
    hist = np.bincount((planes + offsets).ravel(), minlength=count * 256).reshape(count, 256)
    cum = hist.cumsum(axis=1)
    top = hist[np.arange(count), cum.argmax(axis=1)]
    step = (area - top) // 255
    valid = step != 0
    step = np.maximum(step, 1)[:, None]
    lut = np.zeros((count, 256), dtype=np.uint8)
    lut[:, 1:] = np.clip((cum[:, :-1] + step // 2) // step, 0, 255)
    equalized = np.take_along_axis(lut, planes.astype(np.intp), axis=1)
    return np.where(valid[:, None], equalized, planes).reshape(pixels.shape)


def clahe_array(pixels: np.ndarray) -> np.ndarray:
    """CLAHE (OpenCV) of each ``(H, W)`` plane of uint8 ``(..., H, W)`` pixels."""
    import cv2  # only where CLAHE is asked for

    clahe = cv2.createCLAHE(clipLimit=CLAHE_CLIP_LIMIT, tileGridSize=CLAHE_TILES)
    planes = np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1, *pixels.shape[-2:])
    return np.stack([clahe.apply(plane) for plane in planes]).reshape(pixels.shape)


def normalize_intensity_array(pixels: np.ndarray, method: str) -> np.ndarray:
    """Apply intensity normalisation ``method`` to uint8 NumPy images ``(..., H, W)``."""
    if method == "none":
        return pixels
    if method == "equalize":
        return equalize_array(pixels)
    if method == "clahe":
        return clahe_array(pixels)
    raise unknown_intensity(method)


def unknown_intensity(method: str) -> ValueError:
    """The error for an intensity normalisation that is not one of
    :data:`~pneumolab.choices.INTENSITIES`."""
    return ValueError(f"unknown intensity normalisation {method!r}; choose from {INTENSITIES}")
