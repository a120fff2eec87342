"""Read DICOM radiographs into 8-bit grayscale, as a radiologist's viewer would display them.

Pipeline: decode the stored values → modality LUT (Rescale Slope/Intercept or Modality LUT
Sequence) → VOI transform (VOI LUT Sequence over its entries' own range, whatever bit depth
its descriptor states; else the first Window Center/Width, honouring VOI
LUT Function; without either, the image's own min..max, Pixel Padding Value left out) →
0..255 → MONOCHROME1, or a Presentation LUT Shape INVERSE, inverted (so bone is always bright)
→ padding black. 8-, 12- and 16-bit, signed or unsigned data all take this path;
RGB/YBR secondary captures are converted to grayscale as they are.

Refused with an :class:`~pneumolab.errors.ImageLoadError` naming the file: DICOM without pixel
data (reports, structured reports, presentation states), multi-frame objects (a cine or
tomosynthesis series is not one radiograph; pick the frame yourself and save it), other
photometric interpretations (PALETTE COLOR), images over ``max_pixels``, uncompressed pixel
data longer than the header's rows and columns hold (but for padding: one byte, or zero bytes
short of a row) or shorter (a file cut short), compressed pixel data that no installed decoder
can read, deflate-compressed files that would inflate
beyond what ``max_pixels`` allows (pydicom inflates the whole file before reading its header,
so this is checked first, streaming), and transfer syntaxes no installed decoder handles (the
message lists what to install).

Transfer syntaxes, as pydicom 3.0 reports them with only pydicom + Pillow installed:
uncompressed (implicit/explicit VR little endian, explicit VR big endian, deflated), RLE
Lossless, JPEG Baseline and Extended (Pillow; 8-bit only — 12-bit JPEG Extended needs
pylibjpeg or gdcm), JPEG 2000 (Pillow with OpenJPEG). JPEG Lossless (process 14, the common
one for CR/DX archives) and JPEG-LS need ``pylibjpeg pylibjpeg-libjpeg`` (or gdcm, or
``pyjpegls`` for JPEG-LS); High-Throughput JPEG 2000 needs ``pylibjpeg pylibjpeg-openjpeg``.
"""

from __future__ import annotations

import copy
import io
import logging
import mmap
import re
import threading
import warnings
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing, get_decoder
from pydicom.pixels.utils import _get_jpg_parameters  # JPEG-LS headers: no public parser
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGExtended12Bit,
)

from pneumolab.data.imageio import DEFAULT_MAX_PIXELS, array_to_image, check_pixel_count, reading
from pneumolab.errors import ImageLoadError, brief

log = logging.getLogger(__name__)

MAX_BYTES_PER_PIXEL = 6
"""16-bit RGB, the largest pixel a radiograph's DICOM holds."""
HEADER_ALLOWANCE = 16 << 20
"""Bytes beyond the pixels a deflated dataset may inflate to (tags, overlays, icons)."""
PART10_META_START = 128 + 4 + 12
"""Preamble, ``DICM``, then the File Meta group length element; the group follows."""


def check_inflated_size(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
    """ImageLoadError naming ``path`` if it is a deflate-compressed DICOM whose dataset inflates
    beyond ``max_pixels`` pixels' worth of bytes; counted by streaming, 1 MB at a time, before
    pydicom inflates it whole (any other file: nothing to check)."""
    meta = read_file_meta_info(path)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return
    limit = max_pixels * MAX_BYTES_PER_PIXEL + HEADER_ALLOWANCE
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        f.seek(PART10_META_START + int(meta.get("FileMetaInformationGroupLength") or 0))
        for chunk in iter(lambda: f.read(1 << 16), b""):
            while chunk and not inflater.eof:  # bytes after the stream's end are not inflated
                inflated += len(inflater.decompress(chunk, 1 << 20))
                if inflated > limit:
                    raise ImageLoadError(
                        f"{path}: deflated DICOM that inflates to more than {limit:,} bytes, "
                        f"over what {max_pixels:,} pixels need (possible decompression bomb)"
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                return


_reading = threading.local()
"""``messages``: the list collecting pydicom's messages on this thread (None: not collecting)."""


class _PydicomMessages(logging.Handler):
    """pydicom's messages (it logs each warning as well as raising it), kept for the thread
    that caused them: decoding threads read several files at once, and ``warnings`` filters
    are one state for the whole process (``catch_warnings`` on threads mixed up files, and
    could leave a filter behind)."""

    def emit(self, record: logging.LogRecord) -> None:
        messages = getattr(_reading, "messages", None)
        if messages is not None:
            messages.append(record.getMessage())


logging.getLogger("pydicom").addHandler(_PydicomMessages(logging.WARNING))
warnings.filterwarnings("ignore", module="pydicom")  # the same messages: logged, collected above


@contextmanager
def pydicom_messages() -> Iterator[list[str]]:
    """The messages pydicom logs on this thread while the block runs."""
    outer = getattr(_reading, "messages", None)
    messages: list[str] = []
    _reading.messages = messages
    try:
        yield messages
    finally:
        _reading.messages = outer


@contextmanager
def warnings_naming(path: str | Path) -> Iterator[None]:
    """pydicom's warnings (an unknown character set, a value of the wrong length...) logged
    with the file they are about, each once: as Python warnings they named none."""
    with pydicom_messages() as messages:
        yield
    for message in dict.fromkeys(messages):
        log.warning("%s: %s", path, message)


def read_dicom(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, stop_before_pixels: bool = False
) -> Dataset:
    """``pydicom.dcmread`` after :func:`check_inflated_size`: the one way pneumolab opens a
    DICOM file, for its pixels or its header alone. A file written before Part 10 (no
    preamble, no file meta: old archives) is read as pydicom finds it encoded."""
    try:
        check_inflated_size(path, max_pixels)
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:  # no 'DICM' (a .dcm name sent it here): DICOM before Part 10?
        # (never deflated: that needs the file meta)
        ds = pydicom.dcmread(path, stop_before_pixels=stop_before_pixels, force=True)
        if "SOPClassUID" not in ds and "Rows" not in ds:  # nothing an image object holds
            raise
    if "TransferSyntaxUID" not in ds.file_meta:  # no file meta: the encoding it was read in
        ds.file_meta.TransferSyntaxUID = _syntax_read(ds)
    return ds


def _syntax_read(ds: Dataset) -> UID:
    """The uncompressed transfer syntax pydicom found ``ds`` written in."""
    implicit, little_endian = ds.original_encoding
    if not little_endian:
        return ExplicitVRBigEndian
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def _check_pixel_data_length(ds: Dataset, source: str) -> None:
    """Uncompressed pixel data must hold the header's single frame and no more, but for padding:
    one pad byte, or zero bytes short of one row (pydicom strips them; its warning names the
    file). More than that, or anything but zeros, means the header does not describe the data
    (a header that understates the columns would show the image sheared); less, that the file
    was cut short (pydicom's message spoke of group 0028 and transfer syntaxes)."""
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return
    samples = int(ds.Columns) * int(ds.get("SamplesPerPixel") or 1)
    row = samples * int(ds.BitsAllocated) / 8
    expected = (int(ds.Rows) * samples * int(ds.BitsAllocated) + 7) // 8
    if str(ds.get("PhotometricInterpretation")) == "YBR_FULL_422":  # two samples per pixel
        expected = expected // 3 * 2
    extra = len(ds.PixelData) - expected
    if extra < 0:
        raise ImageLoadError(
            f"{source}: truncated or corrupt DICOM: {len(ds.PixelData):,} bytes of pixel data "
            f"where its {ds.Rows}x{ds.Columns} pixels need {expected:,} (the file was cut short, "
            "or its header does not describe the data)"
        )
    padding = extra <= 1 or (extra < row and not ds.PixelData[expected:].strip(b"\0"))
    if not padding:
        raise ImageLoadError(
            f"{source}: {len(ds.PixelData):,} bytes of pixel data where its {ds.Rows}x"
            f"{ds.Columns} pixels need {expected:,}; the header does not describe the data"
        )


PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"
"""(7FE0,0010) as little-endian bytes: where the pixel data element starts."""


def _holds_pixel_data_tag(path: Path) -> bool:
    """Whether the file holds a pixel data element that pydicom did not read (cut short: it
    stops at the end of the file and keeps the header alone)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        return data.find(PIXEL_DATA_TAG) >= 0


def _check_decodable(ds: Dataset, max_pixels: int, source: str) -> None:
    """Refuse what cannot become one grayscale image, before decoding anything."""
    if "PixelData" not in ds and "IconImageSequence" in ds:  # the tag found would be the icon's
        raise ImageLoadError(f"{source}: DICOM whose only image is its icon, not a radiograph")
    floats = next((k for k in ("FloatPixelData", "DoubleFloatPixelData") if k in ds), None)
    if "PixelData" not in ds and floats:
        raise ImageLoadError(
            f"{source}: DICOM with floating-point pixels ({floats}: a parametric map or "
            "derived image), not a radiograph's stored pixel values"
        )
    if "PixelData" not in ds and _holds_pixel_data_tag(Path(source)):
        raise ImageLoadError(
            f"{source}: truncated or corrupt DICOM: its pixel data element is cut short"
        )
    if "PixelData" not in ds:
        sop_class = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
        kind = getattr(sop_class, "name", None) or "unknown SOP class"
        if "Image Storage" in kind:  # an image object: cut off before its pixels (a copy
            raise ImageLoadError(  # stopped inside the header), not a report or a state
                f"{source}: truncated or corrupt DICOM: an image object ({kind}) without pixel data"
            )
        raise ImageLoadError(f"{source}: DICOM without pixel data ({kind}), not an image")
    if not ds.PixelData:
        raise ImageLoadError(f"{source}: DICOM whose pixel data element is empty")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise ImageLoadError(
            f"{source}: multi-frame DICOM ({frames} frames); pneumolab classifies single "
            "radiographs — save the frame you want as its own file"
        )
    check_pixel_count(int(ds.Columns), int(ds.Rows), max_pixels, source)
    _check_pixel_data_length(ds, source)
    _check_frame_size(ds, max_pixels, source)
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ImageLoadError(f"{source}: unsupported transfer syntax {syntax.name}") from None
    pillow_only = set(decoder.available_plugins) <= {"pillow"}
    twelve_bit_jpeg = syntax == JPEGExtended12Bit and int(ds.BitsStored) > 8 and pillow_only
    if not decoder.is_available or twelve_bit_jpeg:
        needs = "; ".join(decoder.missing_dependencies)
        depth = f"{ds.BitsStored}-bit " if twelve_bit_jpeg else ""  # Pillow decodes 8-bit only
        raise ImageLoadError(
            f"{source}: pixel data compressed as {depth}{syntax.name}, which no installed "
            f"decoder handles; install one of: {needs}"
        )


def _frame_size(ds: Dataset) -> tuple[int, int] | None:
    """``(width, height)`` that a compressed frame's own header declares (JPEG, JPEG 2000,
    JPEG-LS), read without decoding it; None for uncompressed pixel data or a codestream whose
    header is not read here (RLE: decoded to the DICOM header's size)."""
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return None
    frame = next(generate_frames(ds.PixelData, number_of_frames=1), b"")
    try:
        with Image.open(io.BytesIO(frame)) as opened:
            return opened.size
    except Image.DecompressionBombError:
        return 1 << 16, 1 << 16  # over any limit: the size check below refuses it
    except (OSError, ValueError, SyntaxError):  # JPEG-LS, or not a codestream Pillow knows
        parameters = _get_jpg_parameters(frame)
        return (parameters["width"], parameters["height"]) if parameters else None


def _check_frame_size(ds: Dataset, max_pixels: int, source: str) -> None:
    """Refuse a compressed frame larger than ``max_pixels``, or of another size than the
    header's Rows and Columns, before it is decoded: the decoders inflate the frame the
    codestream describes (a 1.7 MB file claiming 256 x 256 held a 10,500 x 10,500 JPEG)."""
    size = _frame_size(ds)
    if size is None:
        return
    check_pixel_count(*size, max_pixels, source)
    if size != (int(ds.Columns), int(ds.Rows)):
        raise ImageLoadError(
            f"{source}: corrupt DICOM: its compressed image is {size[0]}x{size[1]} pixels, "
            f"its header says {ds.Columns}x{ds.Rows}"
        )


def _voi_lut_view(ds: Dataset) -> Dataset:
    """A dataset holding ``ds``'s first VOI LUT read as 16-bit entries, whatever its
    LUTDescriptor's third value says: writers state 16 bits for 12-bit tables, or 8 bits for
    entries above 255 (pydicom then fails on the overflow); the table's own range is used."""
    descriptor = ds.VOILUTSequence[0].get("LUTDescriptor")
    if descriptor is None or len(descriptor) != 3:
        raise ImageLoadError(
            f"{ds.filename}: VOI LUT without a three-value LUTDescriptor ({descriptor!r})"
        )
    stated, held = descriptor[0] or 1 << 16, _lut_entries(ds.VOILUTSequence[0].get("LUTData"))
    if held < stated:  # pydicom failed on an IndexError (or a TypeError without data)
        raise ImageLoadError(
            f"{ds.filename}: corrupt VOI LUT: its LUTDescriptor states {stated:,} entries, "
            f"its LUTData holds {held:,}"
        )
    table = copy.deepcopy(ds.VOILUTSequence[0])
    table.LUTDescriptor = [descriptor[0], descriptor[1], 16]
    view = Dataset()
    view.file_meta = ds.file_meta  # the byte order of OW table data
    view.VOILUTSequence = [table]
    return view


def _lut_entries(data: bytes | int | Sequence[int] | None) -> int:
    """How many 16-bit entries a LUTData value holds (OW bytes, one US value, or a list)."""
    if data is None:
        return 0
    if isinstance(data, bytes | bytearray):
        return len(data) // 2
    return 1 if isinstance(data, int) else len(data)


def unusable_window(ds: Dataset) -> str | None:
    """Why the header's window cannot be applied (a centre or width that is not a number, as a
    broken modality writes text there, or a width the standard does not allow: pydicom fails on
    both), so the image is shown over its own range, as a viewer would; None where the window is
    usable, absent or not the one applied (a VOI LUT goes first)."""
    if ds.get("VOILUTSequence") or ds.get("WindowCenter") is None:
        return None
    if ds.get("WindowWidth") is None:  # a centre alone is no window: none is applied
        return None
    for name, tag in (("Window Center", "WindowCenter"), ("Window Width", "WindowWidth")):
        value = _first(ds.get(tag))
        try:
            float(value)
        except (TypeError, ValueError):
            return (
                f"DICOM {name} {str(value)!r} is not a number: shown over the image's own "
                "range instead"
            )
    width = float(_first(ds.get("WindowWidth")))
    # LINEAR asks for a width of at least 1; LINEAR_EXACT and SIGMOID for more than 0
    linear = str(ds.get("VOILUTFunction", "LINEAR")).upper() in ("", "LINEAR")
    if width >= 1 if linear else width > 0:
        return None
    least = "at least 1" if linear else "more than 0"
    return (
        f"DICOM Window Width {width:g} is no window (the standard asks for {least}): shown over "
        "the image's own range instead"
    )


def _voi(pixels: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float] | None:
    """The VOI transform applied, with its output range; None when the file defines none.

    A VOI LUT's output range is its entries' own lowest..highest value (a standard table spans
    its descriptor's bit depth; one whose descriptor misstates it is still shown in full)."""
    if ds.get("VOILUTSequence"):
        view = _voi_lut_view(ds)
        entries, first = view.VOILUTSequence[0].LUTDescriptor[:2]
        table = apply_voi(np.arange(first, first + (entries or 1 << 16)), view)
        shown = apply_voi(np.rint(pixels).astype(np.int64), view)
        return shown, float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        problem = unusable_window(ds)
        if problem:
            log.warning("%s: %s", ds.filename, problem)
            return None
        # pydicom maps everything below/above the window to the ends of its output range
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        return apply_windowing(pixels, ds), float(low), float(high)
    return None


def _first(value: Any) -> Any:
    """The first of a multi-valued element's values (the window pydicom applies), else it."""
    return value[0] if isinstance(value, Sequence) and not isinstance(value, str) else value


def _to_uint8(pixels: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (pixels.astype(np.float64) - low) * (255.0 / (high - low))
    return np.round(scaled.clip(0, 255)).astype(np.uint8)


def _padding(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Where ``stored`` holds Pixel Padding Value (up to Pixel Padding Range Limit): the area
    outside the exposed field, which a viewer leaves black; None where the file has none."""
    if ds.get("PixelPaddingValue") is None:
        return None
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == value
    low, high = sorted((value, int(limit)))
    return (stored >= low) & (stored <= high)


UNDECODED_DETAIL = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")
"""An object's address in a decoder's message (``<_io.BytesIO object at 0x7f...>``): no help."""


def _stored_pixels(ds: Dataset) -> np.ndarray:
    """``ds.pixel_array``; ImageLoadError naming the file and the transfer syntax where no
    installed decoder can read the compressed pixel data (pydicom's RuntimeError began "Unable to
    decode as exceptions were raised by all available plugins", with objects' addresses)."""
    try:
        return ds.pixel_array
    except RuntimeError as exc:
        reasons = str(exc).partition("plugins:")[2] or str(exc)
        detail = brief(UNDECODED_DETAIL.sub("", reasons))
        syntax = ds.file_meta.TransferSyntaxUID
        raise ImageLoadError(
            f"{ds.filename}: corrupt DICOM: its {syntax.name} pixel data cannot be decoded "
            f"({detail})"
        ) from None


def _monochrome_to_uint8(ds: Dataset) -> np.ndarray:
    stored = _stored_pixels(ds)
    padding = _padding(ds, stored)
    pixels = apply_modality_lut(stored, ds)
    windowed = _voi(pixels, ds)
    if windowed is not None:
        image = _to_uint8(*windowed)
    else:  # the image's own range, padding left out (it would set one end of it)
        shown = pixels if padding is None or padding.all() else pixels[~padding]
        image = _to_uint8(pixels, float(shown.min()), float(shown.max()))
    # MONOCHROME1, or a Presentation LUT Shape INVERSE (a DX MONOCHROME1 states both: once)
    inverse = ds.PhotometricInterpretation == "MONOCHROME1" or (
        str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
    )
    image = 255 - image if inverse else image
    if padding is not None:
        image[padding] = 0
    return image


def load_dicom(
    path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, colour: bool = False
) -> Image.Image:
    """Open a DICOM file as an 8-bit grayscale PIL image (mode ``L``), windowed for display;
    ``colour``: record how coloured an RGB or YBR image is (:func:`load_image`'s).

    Raises ImageLoadError naming the file and the reason on anything that cannot be used.
    """
    path = Path(path)
    with reading(path, "DICOM", max_pixels), warnings_naming(path):
        try:
            ds = read_dicom(path, max_pixels)
            _check_decodable(ds, max_pixels, str(path))
            photometric = str(ds.PhotometricInterpretation)
            if photometric in ("MONOCHROME1", "MONOCHROME2"):  # one plane, or several to gray
                return array_to_image(_monochrome_to_uint8(ds))
            if photometric == "RGB" or photometric.startswith("YBR"):
                return array_to_image(_stored_pixels(ds), colour)
            raise ImageLoadError(f"{path}: unsupported photometric interpretation {photometric}")
        except InvalidDicomError:
            if path.stat().st_size == 0:  # as an empty JPEG or PNG is named
                raise ImageLoadError(f"{path}: empty file (0 bytes)") from None
            raise ImageLoadError(f"{path}: not a DICOM file (no 'DICM' header)") from None
        except (AttributeError, KeyError) as exc:
            raise ImageLoadError(
                f"{path}: DICOM image without required attribute ({exc})"
            ) from None
