"""Checkpoints written so that a stop or a full disk never damages the last good one."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from pneumolab.config import TrainConfig, inert_settings, network_settings
from pneumolab.errors import RunDirError
from pneumolab.files import write_bytes_atomically

HOW_RUN = frozenset({"accelerator", "distributed_strategy", "precision"})
"""Settings a resume may change: on what and how it computes, not what it trains (with
``weights``, the starting point already in the checkpoint). Not the number of processes
(``devices``, ``num_nodes``): the learning-rate schedule's length depends on it."""


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


def resume_settings(config: TrainConfig) -> dict[str, Any]:
    """What a resumed run must still train with: :func:`~pneumolab.config.network_settings`
    but the hardware (:data:`HOW_RUN`) and the starting weights."""
    return {
        key: value
        for key, value in network_settings(config).items()
        if key not in HOW_RUN | {"weights"}
    }


class RunSettings(L.Callback):
    """Files :func:`resume_settings` in every checkpoint, for :func:`check_resumed_settings`."""

    def __init__(self, config: TrainConfig) -> None:
        self.settings = resume_settings(config)

    def state_dict(self) -> dict[str, Any]:
        return {"settings": self.settings}


def check_resumed_settings(checkpoint: Path, config: TrainConfig, config_file: Path) -> None:
    """RunDirError naming the settings of ``config_file`` that differ from those ``checkpoint``
    was trained with (an edited config.yaml: another architecture failed to load with a
    traceback, fewer epochs than done too, another image size mixed two sizes silently). A
    checkpoint from before settings were filed passes. Read with ``weights_only``: a run folder
    from elsewhere runs no code here."""
    saved = torch.load(checkpoint, map_location="cpu", mmap=True, weights_only=True)
    filed = saved.get("callbacks", {}).get(RunSettings.__qualname__, {}).get("settings")
    if filed is None:
        return
    now, defaults = resume_settings(config), resume_settings(TrainConfig())
    was = defaults | filed  # a setting newer than the checkpoint was trained at its default
    unread = inert_settings(config)  # filed as given by earlier versions, now at its default
    changed = sorted(key for key in now if was[key] != now[key] and key not in unread)
    if changed:
        edits = ", ".join(f"{key}: {was[key]!r} -> {now[key]!r}" for key in changed)
        raise RunDirError(
            f"{config_file}: changed since {checkpoint.name} was saved ({edits}); a resume continues "
            "the training it started: put the settings back, or train a new run"
        )
