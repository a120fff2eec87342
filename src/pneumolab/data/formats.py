"""The image formats pneumolab reads: one list for the command line, folder scans and the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageFormat:
    """A readable format: its file suffixes and the bytes it starts with at ``offset``."""

    name: str
    suffixes: tuple[str, ...]
    signature: bytes
    offset: int = 0
    pillow_name: str | None = None
    """Pillow's name for the format; None where pydicom reads it."""


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", (".jpeg", ".jpg"), b"\xff\xd8\xff", pillow_name="JPEG"),
    ImageFormat("PNG", (".png",), b"\x89PNG\r\n\x1a\n", pillow_name="PNG"),
    ImageFormat("DICOM", (".dcm",), b"DICM", offset=128),
)
IMAGE_SUFFIXES: frozenset[str] = frozenset(s for f in FORMATS for s in f.suffixes)
"""Suffixes of the files a folder scan picks up (lower case)."""
PILLOW_FORMATS: tuple[str, ...] = tuple(f.pillow_name for f in FORMATS if f.pillow_name)
"""The only Pillow decoders pneumolab lets run on a file."""
ACCEPTED = ", ".join(f.name for f in FORMATS[:-1]) + f" or {FORMATS[-1].name}"
"""The accepted formats in words, for messages."""
UNREAD_IMAGE_SUFFIXES: frozenset[str] = frozenset(
    (".tif", ".tiff", ".gif", ".webp", ".bmp", ".jp2", ".j2k", ".heic", ".heif", ".avif")
)
"""Suffixes of image formats pneumolab does not read: a folder scan lists them all the same,
so that each is answered with an error naming its format (a 16-bit TIFF export vanished from a
results file with only a count in a log line)."""


def sniff(head: bytes) -> ImageFormat | None:
    """The format whose signature ``head`` (a file's first bytes, 132 or more) carries, else None.
    DICOM's ``DICM`` after its preamble wins over a signature the preamble starts with: a
    dual-format file (a JPEG or TIFF header in the preamble) is read as DICOM by name too."""
    by_offset = sorted(FORMATS, key=lambda f: -f.offset)
    return next((f for f in by_offset if head.startswith(f.signature, f.offset)), None)


def sniff_file(path: Path) -> ImageFormat | None:
    """The format ``path``'s first bytes carry; None for other content, or a file not readable."""
    try:
        with path.open("rb") as f:
            return sniff(f.read(132))
    except OSError:
        return None


FRAME_KINDS = {
    **dict.fromkeys((0xC3, 0xC7, 0xCB, 0xCF), "lossless JPEG"),
    **dict.fromkeys((0xC5, 0xC6, 0xCD, 0xCE), "hierarchical JPEG"),
    **dict.fromkeys((0xC9, 0xCA), "arithmetic-coded JPEG"),
    0xF7: "JPEG-LS",
}
"""JPEG start-of-frame markers of processes other than baseline, extended and progressive
Huffman (0xC0-0xC2), by what they are."""
START_OF_FRAME = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}
"""Start-of-frame markers (0xC4, 0xC8 and 0xCC are tables and a reserved code; 0xF7 is
JPEG-LS's)."""


def jpeg_variant(head: bytes) -> str | None:
    """What a JPEG's frame header (found in ``head``, its first bytes) says it is, where that is
    a kind Pillow's 8-bit decoder may not read: ``"12-bit JPEG"``, ``"lossless JPEG"``,
    ``"hierarchical JPEG"``, ``"arithmetic-coded JPEG"`` or ``"JPEG-LS"``; None for an 8-bit
    baseline/progressive frame, or where none is found."""
    at = 2  # after the start-of-image marker
    while at + 5 <= len(head) and head[at] == 0xFF:
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in START_OF_FRAME:
            if marker in FRAME_KINDS:
                return FRAME_KINDS[marker]
            return f"{head[at + 4]}-bit JPEG" if head[at + 4] != 8 else None
        at += 2 + int.from_bytes(head[at + 2 : at + 4], "big")
    return None
