"""A corpus of bad and unusual image inputs, written by code (no binary files in git).

``write_corpus(folder)`` returns ``{name: BadInput}``: the file (or folder, or missing path) and
a fragment the error message about it must contain, for the CLI and for the HTTP API alike.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class BadInput:
    path: Path
    problem: str
    """A fragment of the error message (the CLI's, and the server's ``detail``)."""
    http_status: int | None = None
    """The server's answer to an upload of it (None: cannot be uploaded, e.g. a folder)."""


def image_bytes(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def animated_png() -> bytes:
    """A two-frame animated PNG (APNG)."""
    buffer = io.BytesIO()
    first, second = Image.new("L", (40, 30), 20), Image.new("L", (40, 30), 220)
    first.save(buffer, "PNG", save_all=True, append_images=[second])
    return buffer.getvalue()


def png_header_only(width: int, height: int, bit_depth: int = 16) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, followed by a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def dicom_with_empty_pixel_data() -> bytes:
    """A well-formed DX DICOM whose PixelData element is present but empty."""
    return tiny_dicom(b"")


def dicom_with_text_window() -> bytes:
    """An 8 x 8 DX DICOM whose WindowCenter holds text (written as LO), as a broken modality's."""
    return tiny_dicom(bytes(64), window_center="abcd")


def tiny_dicom(
    pixel_data: bytes, window_center: str | None = None, patient_id: str | None = None
) -> bytes:
    """An 8 x 8, 8-bit DX DICOM holding ``pixel_data`` (and a ``window_center`` as LO text, a
    ``patient_id`` tag)."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("empty.dcm", Dataset(), file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, "1.2.3.4"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation, ds.PixelData = 7, 0, pixel_data
    if window_center is not None:
        ds.add_new(0x00281050, "LO", window_center)  # WindowCenter, whose VR is DS
        ds.WindowWidth = 100
    if patient_id is not None:
        ds.PatientID = patient_id
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_corpus(folder: Path) -> dict[str, BadInput]:
    """Write the bad inputs under ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    jpeg, png = image_bytes("JPEG"), image_bytes("PNG")
    accepted = "accepted format"
    files: dict[str, tuple[bytes, str, int]] = {
        "empty.jpeg": (b"", "empty file (0 bytes)", 415),
        "text.png": (b"not an image at all\n", accepted, 415),
        "truncated.jpeg": (jpeg[: len(jpeg) // 2], "corrupt or undecodable", 422),
        "truncated.png": (png[: len(png) // 2], "corrupt or undecodable", 422),
        "animation.gif": (image_bytes("GIF"), accepted, 415),
        "photo.webp": (image_bytes("WEBP"), accepted, 415),
        "scan.bmp": (image_bytes("BMP"), accepted, 415),
        "scan.tiff": (image_bytes("TIFF"), accepted, 415),
        "bomb.png": (png_header_only(30_000, 30_000), "decompression bomb", 422),
        "cine.png": (animated_png(), "animated PNG (2 frames)", 422),
        "dicom-junk.dcm": (b"\0" * 128 + b"DICM" + b"\xff" * 64, "DICOM", 422),
        "no-pixels.dcm": (dicom_with_empty_pixel_data(), "pixel data element is empty", 422),
        "cut-pixels.dcm": (  # pydicom's message spoke of group 0028 and transfer syntaxes
            tiny_dicom(bytes(10)),
            "truncated or corrupt DICOM: 10 bytes of pixel data where its 8x8 pixels need 64",
            422,
        ),
        "a[/i]junk[bold].png": (b"junk with markup in its name", accepted, 415),
        os.fsdecode(b"caf\xe9-junk.jpeg"): (b"junk, name not UTF-8", accepted, 415),
    }
    corpus = {}
    for name, (data, problem, status) in files.items():
        (folder / name).parent.mkdir(exist_ok=True)  # "a[/i]...": a folder "a[" and a file
        (folder / name).write_bytes(data)
        corpus[name] = BadInput(folder / name, problem, status)
    (folder / "y.jpeg").mkdir()
    corpus["y.jpeg"] = BadInput(folder / "y.jpeg", "folder without images")
    corpus["missing.jpeg"] = BadInput(folder / "missing.jpeg", "file not found")
    return corpus
