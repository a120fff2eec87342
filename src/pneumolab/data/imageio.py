"""Read X-ray images of any common mode into 8-bit grayscale, fast on large JPEGs."""

from __future__ import annotations

import errno
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from pneumolab.data.colour import COLOUR_SHARE, image_coloured_share
from pneumolab.data.formats import (
    ACCEPTED,
    IMAGE_SUFFIXES,
    PILLOW_FORMATS,
    jpeg_variant,
    sniff,
    sniff_file,
)
from pneumolab.errors import ImageLoadError, brief
from pneumolab.files import permission_problem

log = logging.getLogger(__name__)

SOURCE_SIZE = "pneumolab.source_size"
"""Key of ``Image.info`` where :func:`load_image` keeps the file's own (width, height), upright,
and the size it decoded to: a JPEG decoded at reduced scale is smaller, and the scope checks
judge the file's size (:func:`source_size`)."""
DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image accepted (width x height); larger ones are refused as possible decompression bombs."""

# Pillow warns on opening an image of 89-179 million pixels; pneumolab's own limit
# (``max_pixels``, checked right after opening) refuses it by name instead, or was raised on purpose.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


JPEG_HEADER_BYTES = 1 << 18
"""Bytes read to find a JPEG's frame header: EXIF and ICC segments (64 KB each) come first."""
RAISE_THE_LIMIT = (
    "if the image is genuine, raise the limit "
    "(pneumolab predict, audit, explain, serve: --max-megapixels; "
    "Python: Predictor.from_run(..., max_pixels=...))"
)


def check_pixel_count(width: int, height: int, max_pixels: int, source: str) -> None:
    """ImageLoadError naming ``source`` where ``width`` x ``height`` is over ``max_pixels``."""
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{source}: {width}x{height} pixels is over the limit of {max_pixels:,} pixels "
            f"(possible decompression bomb); {RAISE_THE_LIMIT}"
        )


def _admit_in_pillow(max_pixels: int) -> None:
    """Raise Pillow's own limit (it refuses an image of over twice ``Image.MAX_IMAGE_PIXELS``
    while opening it, before pneumolab's check) where ``max_pixels`` was raised above it on
    purpose; never lowered, so other users of Pillow in the process keep at least theirs."""
    if Image.MAX_IMAGE_PIXELS is not None and max_pixels > 2 * Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1


GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "F"}
"""Pillow modes without colour channels."""


def to_grayscale(image: Image.Image, colour: bool = True) -> Image.Image:
    """Convert a PIL image of any mode (1, L, P, RGB, RGBA, LA, CMYK, YCbCr, I;16, I, F) to mode
    ``L``; with ``colour``, a colour image's share of clearly coloured pixels is kept in its
    ``info`` (:func:`~pneumolab.data.colour.colour_share_of`; the scope checks read it).

    High-bit-depth images are rescaled from their own min..max range to 0..255.
    """
    if image.mode == "L":
        return image
    if image.mode in {"I;16B", "I;16L", "I;16N"}:  # Pillow reads no extrema of these modes
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)))
    if image.mode in {"I", "I;16", "F"}:
        return _rescale_image(image)
    if image.mode in {"RGBA", "LA", "PA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image)
    # a JPEG decoded as YCbCr: its Y plane is the gray libjpeg gives (draft "L") exactly
    gray = image.getchannel(0) if image.mode == "YCbCr" else image.convert("L")
    if colour and image.mode not in GRAY_MODES:
        gray.info[COLOUR_SHARE] = image_coloured_share(image)
    return gray


def image_to_grayscale(image: Image.Image) -> Image.Image:
    """A caller's PIL image as :func:`to_grayscale` makes it, checked as arrays are: an empty
    image, a float image holding NaN or infinite values, and a mode that has no grayscale
    (``LAB``, ``La``...) are ImageLoadErrors, not a score of a black image or Pillow's error."""
    described = f"PIL image of mode {image.mode} and size {image.width}x{image.height}"
    if image.width == 0 or image.height == 0:
        raise ImageLoadError(f"{described}: empty")
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise ImageLoadError(f"{described}: holds NaN or infinite values")
    try:
        return to_grayscale(image)
    except ValueError as exc:  # Pillow: "conversion from LAB to L not supported"
        raise ImageLoadError(f"{described}: no grayscale conversion ({exc})") from None


def _rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """A 2-D array mapped linearly from its own min..max to 0..255 (rounded)."""
    low, high = (pixels.min().item(), pixels.max().item()) if pixels.size else (0, 0)
    integer = pixels.dtype.kind in "iu"
    return _rescaled(lambda start, stop: pixels[start:stop], pixels.shape, low, high, integer)


def _rescale_image(image: Image.Image) -> Image.Image:
    """A 16/32-bit or float PIL image mapped from its own min..max to an 8-bit one, reading it a
    band of rows at a time (no full-size copy: a 16-bit 7000 x 7000 X-ray costs its 98 MB and
    the 49 MB result, not the ~400 MB of a float64 copy)."""
    low, high = cast(tuple[float, float], image.getextrema())  # one band: (min, max)
    width, height = image.size

    def rows(start: int, stop: int) -> np.ndarray:
        return np.asarray(image.crop((0, start, width, min(stop, height))))

    return Image.fromarray(_rescaled(rows, (height, width), low, high, image.mode != "F"))


def _rescaled(
    rows: Callable[[int, int], np.ndarray],
    shape: tuple[int, ...],
    low: float,
    high: float,
    integer: bool,
) -> np.ndarray:
    """``(rows(start, stop) - low) * 255 / (high - low)``, rounded to uint8, band by band;
    integer ranges under 2^16 go through a lookup table (same values as the float formula)."""
    if high <= low:
        return np.zeros(shape, dtype=np.uint8)
    scale = 255.0 / (high - low)
    table = None
    if integer and high - low < 1 << 16:
        table = np.round(np.arange(int(high - low) + 1, dtype=np.float64) * scale).astype(np.uint8)
    out = np.empty(shape, dtype=np.uint8)
    band = max(1, (1 << 20) // max(1, shape[1]))
    for start in range(0, shape[0], band):
        block = rows(start, start + band)
        if table is not None:
            out[start : start + band] = table[_offsets(block, int(low))]
        else:
            out[start : start + band] = np.round((block.astype(np.float64) - low) * scale)
    return out


def _offsets(block: np.ndarray, low: int) -> np.ndarray:
    """``block - low`` as int64 indices, exactly: unsigned arrays subtract in their own type (a
    uint64 above 2^63 does not fit an int64), signed ones in int64 (their own type would wrap)."""
    if block.dtype.kind == "u":
        return (block - block.dtype.type(low)).astype(np.int64)
    return block.astype(np.int64) - low


LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])
"""ITU-R 601-2 luma: gray from RGB (Pillow's ``convert("L")``)."""


def _opacity(array: np.ndarray) -> np.ndarray | float:
    """An (H, W, 4) array's alpha as 0..1, to composite on black as Pillow does; 1 for
    (H, W, 3). Alpha's full scale is the colours' own: 1 where every colour value is within
    0..1, else 255 or 65535, whichever holds them (an int64 array of 8-bit pixels is 8-bit)."""
    if array.shape[-1] != 4:
        return 1.0
    top = float(array[..., :3].max())
    full = next((scale for scale in (1.0, 255.0, 65535.0) if top <= scale), top)
    return np.clip(array[..., 3].astype(np.float64) / full, 0.0, 1.0)


def array_to_image(array: np.ndarray, colour: bool = True) -> Image.Image:
    """Wrap a 2-D (H, W), 3-D (H, W, C) or one-channel (1, H, W) array as a grayscale PIL image.

    uint8 arrays are taken as they are; float arrays with every value in 0..1 (torchvision's
    convention: ``ToTensor``'s output, ``pixels / 255``) are mapped from 0..1, so that they score
    as the 8-bit image they came from; other arrays are rescaled from their own min..max range.
    ``colour``: record how coloured a colour array is (:func:`to_grayscale`). ImageLoadError for
    an empty array, or one holding NaN or infinite values.
    """
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ImageLoadError(f"array of dtype {array.dtype}: not pixel values (bool, int or float)")
    if array.ndim == 3 and array.shape[0] == 1 and array.shape[-1] not in (1, 3, 4):
        array = array[0]  # PyTorch's layout of one gray image
    if array.size == 0:
        raise ImageLoadError(f"array of shape {array.shape}: empty")
    if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
        raise ImageLoadError(f"array of shape {array.shape}: holds NaN or infinite values")
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        if array.shape[-1] == 1:
            array = array[..., 0]
        elif array.dtype == np.uint8:  # RGBA composited on black, as a PIL image is
            mode = "RGBA" if array.shape[-1] == 4 else "RGB"
            return to_grayscale(Image.fromarray(np.ascontiguousarray(array), mode), colour)
        else:  # the luma weights Pillow's convert("L") uses, as for 8-bit colour
            gray = _gray_array_to_image(
                array[..., :3].astype(np.float64) @ LUMA_WEIGHTS * _opacity(array)
            )
            if colour:
                gray.info[COLOUR_SHARE] = _array_coloured_share(array)
            return gray
    if array.ndim != 2:
        raise ImageLoadError(
            f"array of shape {array.shape}: expected (H, W), (1, H, W) or (H, W, 1|3|4)"
        )
    return _gray_array_to_image(array)


def _gray_array_to_image(array: np.ndarray) -> Image.Image:
    """A 2-D array as :func:`array_to_image` maps it: uint8 as it is, 0..1 floats from 0..1,
    anything else from its own min..max."""
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.dtype.kind == "f" and array.min() >= 0 and array.max() <= 1:
        return Image.fromarray(_rescaled(lambda i, j: array[i:j], array.shape, 0.0, 1.0, False))
    return Image.fromarray(_rescale_to_uint8(array))


def _array_coloured_share(array: np.ndarray) -> float:
    """:func:`~pneumolab.data.colour.image_coloured_share` of an ``(H, W, 3|4)`` array that is
    not uint8, as 8-bit RGB on the scale its gray image gets (0..1 floats from 0..1, else its own
    min..max), transparent pixels black: judged as the same pixels in a file or a PIL image."""
    opacity = _opacity(array)
    rgb = array[..., :3].astype(np.float64) * (
        opacity[..., None] if isinstance(opacity, np.ndarray) else opacity
    )
    unit = array.dtype.kind == "f" and array.min() >= 0 and array.max() <= 1
    low, high = (0.0, 1.0) if unit else (float(rgb.min()), float(rgb.max()))
    scaled = np.clip(np.rint((rgb - low) * (255.0 / max(high - low, 1e-12))), 0, 255)
    return image_coloured_share(Image.fromarray(scaled.astype(np.uint8), "RGB"))


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is read as DICOM: its content decides (the ``DICM`` header; a JPEG or
    PNG named ``.dcm`` is read as what it is, as the HTTP API reads uploads); a ``.dcm`` name
    only where no signature is found (a DICOM written without its preamble)."""
    found = sniff_file(path)
    if found is not None:
        return found.pillow_name is None
    return path.suffix.lower() == ".dcm"


def _refuse_jpeg_variant(path: Path) -> None:
    """ImageLoadError naming the kind of JPEG ``path`` is, where Pillow failed on a 12-bit,
    lossless, hierarchical or arithmetic-coded JPEG (CR/DX exports hold such): a valid file,
    not a corrupt one. Nothing for any other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(JPEG_HEADER_BYTES)
    except OSError:
        return
    found = sniff(head)
    variant = jpeg_variant(head) if found is not None and found.name == "JPEG" else None
    if variant is not None:
        raise ImageLoadError(
            f"{path}: {variant}, which Pillow does not decode; convert it to an 8-bit "
            "JPEG or a PNG (e.g. with dcmtk or ImageMagick)"
        ) from None


@contextmanager
def reading(path: Path, kind: str, max_pixels: int) -> Iterator[None]:
    """Turn any failure while reading ``path`` into an ImageLoadError that names the file (and,
    for an image Pillow refuses as a bomb, the caller's ``max_pixels``)."""
    try:
        yield
    except ImageLoadError:
        raise
    except FileNotFoundError:
        if path.is_symlink():  # the name is there (`ls` lists it); what it points to is not
            target = os.path.realpath(path)  # the end of a chain of links, as an absolute path
            raise ImageLoadError(f"{path}: a link to {target}, which does not exist") from None
        raise ImageLoadError(f"{path}: file not found") from None
    except IsADirectoryError:
        if not os.access(path, os.R_OK | os.X_OK):
            raise ImageLoadError(f"{path}: {permission_problem(path)}") from None
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ImageLoadError(f"{path}: a folder without images ({suffixes}) in it") from None
    except PermissionError:  # its own permissions, or a folder above it
        raise ImageLoadError(f"{path}: {permission_problem(path)}") from None
    except UnidentifiedImageError:
        if path.is_file() and path.stat().st_size == 0:
            raise ImageLoadError(f"{path}: empty file (0 bytes)") from None
        _refuse_jpeg_variant(path)
        other = _other_format(path)
        raise ImageLoadError(
            f"{path}: {f'a {other} image, ' if other else ''}not an image file of an accepted "
            f"format ({ACCEPTED}){'; convert it to PNG' if other else ''}"
        ) from None
    except Image.DecompressionBombError as exc:  # over Pillow's limit, checked while opening
        # Pillow's limit is at least max_pixels (_admit_in_pillow), so the image is over both
        count = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(count[1]):,} pixels" if count else "its size"
        raise ImageLoadError(
            f"{path}: {size} is over the limit of {max_pixels:,} pixels "
            f"(possible decompression bomb); {RAISE_THE_LIMIT}"
        ) from None
    except Exception as exc:  # OSError, ValueError... and a decoder's own types: one file's problem
        if isinstance(exc, OSError) and exc.errno == errno.ELOOP:
            raise ImageLoadError(
                f"{path}: a loop of symbolic links (leads back to itself)"
            ) from None
        _refuse_jpeg_variant(path)
        raise ImageLoadError(
            f"{path}: corrupt or undecodable {kind} ({type(exc).__name__}: {brief(str(exc))})"
        ) from None


def _other_format(path: Path) -> str | None:
    """The name of the image format Pillow finds ``path`` in, where it is one pneumolab does not
    read (TIFF, GIF, WebP, BMP...: only the header is parsed); None for anything else."""
    try:
        with Image.open(path) as opened:
            return opened.format
    except Exception:  # not an image at all, or one over Pillow's size limit
        return None


EXIF_SIDES_SWAPPED = {5, 6, 7, 8}
"""EXIF orientations that turn the image a quarter: its upright width is its stored height."""


def upright_size(image: Image.Image) -> tuple[int, int]:
    """``image``'s (width, height) once its EXIF orientation is applied, as :func:`upright`
    shows it (as stored where the EXIF block cannot be parsed)."""
    try:
        turned = image.getexif().get(ExifTags.Base.Orientation, 1) in EXIF_SIDES_SWAPPED
    except Exception:  # Pillow's EXIF parser raises struct.error, TypeError, ...
        turned = False
    return (image.height, image.width) if turned else image.size


def upright(image: Image.Image, source: str) -> Image.Image:
    """``image`` turned as its EXIF orientation says (itself, not a copy, where it needs no
    turn); an EXIF block that cannot be parsed leaves it as stored, with a warning naming
    ``source``."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image  # no copy of a 100 MB image
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # Pillow's EXIF parser raises struct.error, TypeError, ...
        log.warning(
            "%s: EXIF orientation unreadable (%s); the image is used as stored", source, exc
        )
        return image


WIDE_COLOUR_PNG = {2, 4, 6}
"""PNG colour types (RGB, gray + alpha, RGBA) whose 16-bit samples Pillow cuts to their high
byte: a 12-bit X-ray stored so came out nearly black."""


PNG_PALETTE = 3
"""The PNG colour type whose IHDR bit depth counts palette indices, not samples."""


def png_depth_and_colour(path: Path) -> tuple[int, int] | None:
    """A PNG's IHDR bit depth (bits per sample; per palette index for colour type 3) and colour
    type; None for a file too short to hold them."""
    with open(path, "rb") as f:
        header = f.read(26)  # the signature, then IHDR: width, height, bit depth, colour type
    return (header[24], header[25]) if len(header) == 26 else None


def _wide_colour_png(path: Path) -> np.ndarray | None:
    """The full samples of a 16-bit colour or gray + alpha PNG (read by OpenCV; colour as RGB,
    alpha dropped); None for any other PNG."""
    if png_depth_and_colour(path) not in {(16, colour) for colour in WIDE_COLOUR_PNG}:
        return None
    import cv2

    pixels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageLoadError(f"{path}: corrupt or undecodable image (its 16-bit samples)")
    if pixels.ndim == 3:  # BGR(A) to RGB, alpha dropped; gray + alpha to gray
        pixels = pixels[..., 2::-1] if pixels.shape[-1] >= 3 else pixels[..., 0]
    return pixels


def _check_single_frame(opened: Image.Image, path: Path) -> None:
    """ImageLoadError for an animated PNG: which of its frames is the X-ray is not ours to
    guess (a multi-frame DICOM is refused alike). A JPEG's extra pictures (MPO previews) are
    left alone: the first is the photograph."""
    frames = getattr(opened, "n_frames", 1)
    if opened.format == "PNG" and frames > 1:
        raise ImageLoadError(
            f"{path}: animated PNG ({frames} frames); pneumolab classifies single images: "
            "save the frame to classify as a plain PNG"
        )


JPEG_MISSING_FILL = 128
"""The flat grey libjpeg decodes the blocks of a JPEG whose data ends before its last block."""


def _refuse_cut_jpeg(opened: Image.Image, path: Path) -> None:
    """ImageLoadError for a JPEG cut short but closed with its end marker (a copy interrupted,
    then finished): the decoder fills the missing blocks with flat grey and Pillow hides
    libjpeg's warning (a JPEG cut without its marker fails in Pillow itself). A bottom-right
    pixel of that exact grey (the last block is always among the missing ones) is only a
    suspicion (an X-ray padded with grey ends so too): the file is then decoded again by
    libjpeg-turbo with its warnings as errors (simplejpeg's strict mode), and refused where that
    decoder says its data ended early (libjpeg's "premature end of data segment" or "of JPEG
    file"; its other warnings pass). A progressive JPEG is always checked so. A baseline JPEG
    cut inside its last block, whose pixels are then not that grey, passes: at most the last
    16 rows of the image differ."""
    if opened.format != "JPEG" or opened.mode not in ("L", "RGB", "YCbCr"):
        return
    corner = np.asarray(
        opened.crop((opened.width - 1, opened.height - 1, opened.width, opened.height))
    )
    # a progressive JPEG cut short keeps its earlier scans' coarse image, not the grey: checked
    # always (they are rare in X-ray archives)
    if not (corner == JPEG_MISSING_FILL).all() and not opened.info.get("progressive"):
        return
    try:
        simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY", strict=True, min_width=8)
    except ValueError as exc:
        if "premature end" not in str(exc).lower():  # another warning: the data is all there
            return
        raise ImageLoadError(
            f"{path}: truncated or corrupt JPEG ({brief(str(exc))}): the decoder fills what "
            "is missing with flat grey; copy the file again from its source"
        ) from None


def load_image(
    path: str | Path,
    size_hint: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    colour: bool = False,
) -> Image.Image:
    """Open an image file as an 8-bit grayscale PIL image, EXIF orientation applied.

    ``size_hint`` lets JPEG decoding work at a reduced scale (DCT scaling) as long as both
    sides stay at least that large: a 2,500 px X-ray meant for a 224 px model decodes ~8x faster.
    DICOM files (``.dcm``, or any name with the ``DICM`` header) go to
    :func:`pneumolab.data.dicom.load_dicom`; a 16-bit colour PNG is read in full by OpenCV
    (Pillow keeps 8 bits of it). ``colour``: record how coloured the file is, for the scope
    checks (:func:`to_grayscale`; what a prediction needs, not training). Raises ImageLoadError
    naming the file on anything unreadable.
    """
    path = Path(path)
    _admit_in_pillow(max_pixels)  # a JPEG-compressed DICOM is decoded by Pillow too
    if is_dicom_file(path):
        from pneumolab.data.dicom import load_dicom  # pydicom is imported only when needed

        return load_dicom(path, max_pixels=max_pixels, colour=colour)
    with reading(path, "image", max_pixels), Image.open(path, formats=PILLOW_FORMATS) as opened:
        check_pixel_count(opened.width, opened.height, max_pixels, str(path))
        _check_single_frame(opened, path)
        stored = opened.size
        wide = _wide_colour_png(path) if opened.format == "PNG" else None
        if wide is not None:  # rescaled from its min..max, as a 16-bit gray PNG is
            image = array_to_image(wide, colour)
            image.info[SOURCE_SIZE] = (stored, image.size)
            return image
        if size_hint and opened.format == "JPEG":  # YCbCr: its gray plane, and its colour
            as_colour = colour and opened.mode == "RGB"
            opened.draft("YCbCr" if as_colour else "L", (size_hint, size_hint))
        opened.load()
        _refuse_cut_jpeg(opened, path)
        decoded = opened.size
        image = to_grayscale(upright(opened, str(path)), colour)
        image = image.copy() if image is opened else image  # readable once the file is closed
        upright_size = stored[::-1] if image.size != decoded else stored  # EXIF turned it
        image.info[SOURCE_SIZE] = (upright_size, image.size)
        return image


def source_size(image: Image.Image) -> tuple[int, int]:
    """The (width, height) of the file ``image`` was decoded from, where :func:`load_image`
    recorded it and the image is still as decoded (Pillow copies ``info`` into a resized or
    cropped image too); else the image's own."""
    recorded = image.info.get(SOURCE_SIZE)
    return recorded[0] if recorded and tuple(recorded[1]) == image.size else image.size


def resize_square(image: Image.Image, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` (aspect ratio not kept, as in the dataset's copies); uint8 array."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)
