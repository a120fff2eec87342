"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


def printable(text: str) -> str:
    """``text`` with the raw bytes of non-UTF-8 file names (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def brief(text: str, limit: int = 300) -> str:
    """``text`` on one line, cut to ``limit`` characters (a library's error can run to pages)."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


def validation_problems(exc: ValidationError, root: str) -> str:
    """One line per pydantic error, joined: ``where.in.the.file: what is wrong`` (``root`` names
    an error of the whole mapping)."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or root}: {e['msg']}" for e in exc.errors())


class PneumolabError(Exception):
    """Base class: the message names the file or setting at fault and what to do about it."""


class DataLayoutError(PneumolabError):
    """A dataset folder does not have the expected ``split/CLASS/image`` layout."""


class ImageLoadError(PneumolabError):
    """An image file could not be read (corrupt, not an image, too large, unsupported mode)."""


class FetchError(PneumolabError):
    """Downloading, verifying or extracting the dataset archive failed."""


class ModelError(PneumolabError):
    """Unknown model name, or weights that cannot be found or loaded."""


class RunDirError(PneumolabError):
    """A run directory is missing, incomplete, or would be overwritten."""


class ConfigError(PneumolabError):
    """A configuration file or override is invalid."""


class ExportError(PneumolabError):
    """An exported model (ONNX) does not reproduce the PyTorch model's outputs."""


class OutputError(PneumolabError):
    """An output path would overwrite existing work, a run's own file, or is not writable."""


class TrainingInterrupted(PneumolabError):
    """Training stopped before its last epoch (by ``signal``: ``SIGINT``, Ctrl+C, or
    ``SIGTERM``); the run can be resumed from its last checkpoint."""

    def __init__(self, message: str, signal: str = "SIGINT") -> None:
        super().__init__(message)
        self.signal = signal
