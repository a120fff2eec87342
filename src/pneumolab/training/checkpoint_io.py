"""Checkpoints written so that a stop or a full disk never damages the last good one."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumolab.errors import RunDirError
from pneumolab.files import write_bytes_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing through a temporary file beside the checkpoint that
    replaces it when complete. Lightning's own writes to the system's temporary folder first
    and, where that is another file system, copies over ``last.ckpt``: a stop mid-copy left
    it cut short, and ``--resume`` could not read it."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        """Save ``checkpoint`` to ``path`` atomically (``storage_options``: not supported)."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_torch_atomically(checkpoint, Path(path))


def save_torch_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` of ``obj`` to ``path``, serialised in memory and written atomically by
    Python (torch's own file writer reports a full disk as a RuntimeError naming no file)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes_atomically(path, buffer.getbuffer())


def check_checkpoint(path: Path) -> Path:
    """``path`` if it is a whole checkpoint (a complete zip archive, as ``torch.save`` writes);
    RunDirError naming it otherwise (one cut short by a stop while it was written)."""
    if not zipfile.is_zipfile(path):
        raise RunDirError(
            f"{path}: not a complete checkpoint (cut short while it was written: a stop or a full "
            "disk); the run cannot be resumed from it: delete the run folder and train again"
        )
    return path
