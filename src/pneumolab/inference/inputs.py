"""What a predictor takes: paths (folders expanded), PIL images, arrays or tensors, turned into
the uint8 pixels the network sees and the scope checks that need no network."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumolab.data.colour import colour_share_of
from pneumolab.data.imageio import (
    DEFAULT_MAX_PIXELS,
    array_to_image,
    image_to_grayscale,
    is_dicom_file,
    load_image,
    resize_square,
    source_size,
    upright,
)
from pneumolab.data.layout import image_files
from pneumolab.scope.checks import ScopeChecks, image_sanity

ImageInput = str | Path | Image.Image | np.ndarray


def given_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """The paths a job was given, as a list (one path alone too, not its characters); TypeError
    for an image in memory (pathlib's own message named no way out)."""
    given = [paths] if isinstance(paths, str | Path) else list(paths)
    odd = next((p for p in given if not isinstance(p, str | os.PathLike)), None)
    if odd is not None:
        raise TypeError(
            f"paths are file or folder names, not {type(odd).__name__}; an image in memory "
            "(array, PIL image, tensor) goes to Predictor.predict"
        )
    return [Path(path) for path in given]


def expand_paths(
    paths: str | Path | Iterable[str | Path], unread_formats: bool = True
) -> list[Path]:
    """Files as given, plus the images inside any folder
    (:func:`~pneumolab.data.layout.image_files`: at any depth, sorted; with ``unread_formats``,
    images of formats not read too, so that a job that answers every file names each).

    A missing path, one this process may not reach (a folder above it it may not read), or a
    folder without images, stays in the list as it is, so that reading it fails with an error
    naming it while the other paths still run.
    """
    found: list[Path] = []
    for path in given_paths(paths):  # os.path.isdir: False, not PermissionError, where blocked
        found += (image_files(path, unread_formats) if os.path.isdir(path) else []) or [path]
    return found


def source_key(path: Path) -> Path:
    """An image's key in a results file: its folder resolved (links and ``..`` followed, as
    files of earlier versions were keyed), its own name kept (two symlinks to one file are two
    rows, each under its name)."""
    return Path(os.path.realpath(path.parent)) / path.name


def file_header_checks(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ScopeChecks:
    """The scope checks a file's header allows before any pixel work: a DICOM's tags (other
    formats: none)."""
    if not is_dicom_file(Path(path)):
        return ScopeChecks()
    from pneumolab.scope.dicom_header import dicom_file_checks  # pydicom when needed

    return dicom_file_checks(path, max_pixels)


def _tensor_as_array(image: Any) -> Any:
    """A tensor as NumPy can take it: detached (``requires_grad``), on the CPU, bfloat16 as
    float32 (NumPy has no bfloat16); anything else as it is."""
    if not hasattr(image, "detach"):
        return image
    tensor = image.detach().cpu()
    return tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor


def prepare_image(
    image: ImageInput, image_size: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, ScopeChecks]:
    """Any supported input to uint8 ``(1, S, S)`` NumPy pixels (``S = image_size``), exactly as
    in training, and the checks that need no network: a DICOM file's header, the image's size
    and contrast. A file over ``max_pixels`` is refused from its header (ImageLoadError). A
    function of its own so that decoding workers need no loaded model."""
    checks = ScopeChecks()
    if isinstance(image, str | Path):
        checks = file_header_checks(image, max_pixels)
        pil = load_image(image, size_hint=image_size, max_pixels=max_pixels, colour=True)
    elif isinstance(image, Image.Image):  # EXIF orientation applied, as to files
        pil = image_to_grayscale(upright(image, "image"))
    elif isinstance(image, np.ndarray) or hasattr(image, "__array__"):  # a tensor too
        pil = array_to_image(np.asarray(_tensor_as_array(image)))
    else:
        raise TypeError(
            f"an image is a path, a PIL image or an array, not {type(image).__name__}; "
            "for many files use predict_paths()"
        )
    pixels = resize_square(pil, image_size)
    # a JPEG's own size, not its reduced decode's
    checks += image_sanity(*source_size(pil), pixels, colour_share_of(pil))
    return np.array(pixels)[None], checks  # writable, for torch
