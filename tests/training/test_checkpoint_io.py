"""Checkpoints are written atomically, and a damaged one is refused by name on --resume."""

from __future__ import annotations

import pickle

import pytest
import torch

from pneumolab.config import TrainConfig
from pneumolab.errors import RunDirError
from pneumolab.run import RunDir
from pneumolab.training.checkpoint_io import (
    AtomicCheckpointIO,
    check_checkpoint,
    check_resumed_settings,
    resume_settings,
)
from pneumolab.training.fit import build_trainer


def test_a_save_cut_short_leaves_the_last_good_checkpoint(tmp_path, monkeypatch):
    """Lightning copied its temporary file over last.ckpt (another file system): a stop
    mid-copy left a cut checkpoint that --resume could not read. Here the stop comes once the
    new bytes are written, before they are on disk."""
    import os

    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    def stopped(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", stopped)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2, "weights": torch.zeros(1000)}, path)
    monkeypatch.undo()
    assert torch.load(check_checkpoint(path), weights_only=False) == {"epoch": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_a_damaged_checkpoint_is_refused_by_name(tmp_path):
    path = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "weights": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(RunDirError, match=r"last\.ckpt: not a complete checkpoint.*train again"):
        check_checkpoint(path)


def test_the_trainer_writes_its_checkpoints_atomically(tmp_path):
    config = TrainConfig(model="pneumolab_cnn_small", pretrained=False, image_size=32)
    trainer = build_trainer(config, RunDir(tmp_path / "run"), [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_full_disk_is_an_os_error_naming_the_file(tmp_path):
    """safetensors and torch write files themselves, and report a full disk in their own error
    types: the command line printed a traceback. A file-size limit stands for the full disk."""
    import subprocess
    import sys

    script = """
import resource, signal, sys, torch
from pneumolab.training.checkpoint_io import AtomicCheckpointIO
from pneumolab.training.train import save_weights
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
for save in (lambda p: save_weights(torch.nn.Linear(100, 100), p),
             lambda p: AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(10_000)}, p)):
    try:
        save(sys.argv[1])
    except OSError as exc:
        print(type(exc).__name__, exc.filename)
"""
    target = tmp_path / "model.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", script, str(target)], capture_output=True, text=True
    )
    assert done.stdout.splitlines() == [f"OSError {target}"] * 2, done.stderr[-2000:]
    assert [p.name for p in tmp_path.iterdir()] == []


class _Runs:
    """An object whose unpickling runs code (what a run folder from elsewhere could hold)."""

    def __reduce__(self):
        return (print, ("ran code",))


def test_a_resume_compares_the_filed_settings_safely(tmp_path, capsys):
    config, checkpoint = TrainConfig(), tmp_path / "last.ckpt"

    def filed(**changes):
        settings = resume_settings(config) | changes
        settings.pop("head_init")  # filed by a pneumolab from before that setting
        torch.save({"callbacks": {"RunSettings": {"settings": settings}}}, checkpoint)

    filed()
    check_resumed_settings(checkpoint, config, tmp_path / "config.yaml")  # the default: passes
    with pytest.raises(RunDirError, match=r"head_init: 'fan_in' -> 'zero'"):
        check_resumed_settings(
            checkpoint, config.model_copy(update={"head_init": "zero"}), tmp_path / "config.yaml"
        )
    filed(devices=2)  # the schedule's length depends on the number of processes
    with pytest.raises(
        RunDirError, match=r"config\.yaml: changed since last\.ckpt.*devices: 2 -> 1"
    ):
        check_resumed_settings(checkpoint, config, tmp_path / "config.yaml")
    filed(precision="bf16-mixed")  # what it computes on may change
    check_resumed_settings(checkpoint, config, tmp_path / "config.yaml")
    # earlier versions filed settings the run never read as given; config.yaml still says so,
    # but read now they are at their defaults: "put the settings back" could not be followed
    filed(early_stopping_patience=5, swa_lr=0.001)  # with monitor last, without SWA
    check_resumed_settings(checkpoint, config, tmp_path / "config.yaml")
    torch.save({"callbacks": {"RunSettings": {"settings": _Runs()}}}, checkpoint)
    with pytest.raises(pickle.UnpicklingError):
        check_resumed_settings(checkpoint, config, tmp_path / "config.yaml")
    assert "ran code" not in capsys.readouterr().out


def test_early_stopping_state_is_filed_under_lightnings_key():
    """Checkpoints of earlier runs hold EarlyStopping's state under Lightning's key: under
    another key it was skipped without a word, and a resumed run counted its patience anew."""
    from lightning.pytorch.callbacks import EarlyStopping

    from pneumolab.training.callbacks import FineTuningEarlyStopping

    ours = FineTuningEarlyStopping(from_epoch=1, monitor="val_auc", mode="max", patience=2)
    assert ours.state_key == EarlyStopping(monitor="val_auc", mode="max").state_key
