"""Knowledge distillation: a trained run (the teacher) scores every training batch, and the
student learns towards its probabilities as well as towards the labels."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from pneumolab.config import TrainConfig, resolve_config
from pneumolab.errors import ConfigError, RunDirError
from pneumolab.inference.run_models import load_network
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir, weights_digest
from pneumolab.run_meta import RunMeta, TeacherRecord

log = logging.getLogger(__name__)


def check_teacher(run_dir: str | Path, config: TrainConfig) -> RunMeta:
    """The metadata of the run ``config`` would be distilled from: a RunDirError for a missing
    or unfinished run or an ensemble, a ConfigError when it normalises intensity otherwise."""
    meta = RunDir(Path(run_dir)).read_meta()
    if meta.is_ensemble:
        raise RunDirError(
            f"{run_dir} is an ensemble: a teacher is a single network; use one of the "
            "ensemble's member runs (its meta.json lists them)"
        )
    intensity = meta.preprocessing.intensity
    if intensity != config.intensity:
        raise ConfigError(
            f"teacher {run_dir} normalises intensity with {intensity!r}, the student with "
            f"{config.intensity!r}: train the student with --intensity {intensity}"
        )
    return meta


class Teacher:
    """A trained single-model run, frozen, that gives P(pneumonia) of the student's training
    images: the same augmented view the student sees (consistent teaching), resized to the
    size the teacher was trained at. Not an ``nn.Module``, so the student's checkpoints and
    optimiser never hold the teacher's weights."""

    def __init__(self, model: XrayClassifier, image_size: int, record: TeacherRecord) -> None:
        self.model = model.eval().requires_grad_(False)
        self.image_size = image_size
        self.record = record

    @classmethod
    def from_run(cls, run_dir: str | Path, config: TrainConfig) -> Teacher:
        """The network of finished run ``run_dir``: a RunDirError for a missing run or an
        ensemble, a ConfigError when it normalises intensity otherwise than ``config``."""
        run = RunDir(Path(run_dir))
        meta = check_teacher(run_dir, config)
        with torch.random.fork_rng(devices=[]):  # building it leaves the student's seeds alone
            model = load_network(run, meta)
        record = TeacherRecord(
            run=str(run_dir),
            model=meta.model,
            image_size=meta.image_size,
            weights_sha256=weights_digest(run.root),
        )
        return cls(model, meta.image_size, record)

    def warn_if_it_saw(self, student: RunDir) -> None:
        """Warn when the teacher trained on images the student validates on: its knowledge of
        them would flatter the student's validation figures."""
        teacher = RunDir(Path(self.record.run))
        validation = student.split_paths("val")
        seen = teacher.split_paths("train") & validation
        if seen:
            log.warning(
                "teacher %s trained on %d of the student's %d validation images: the student's "
                "validation figures are optimistic; train it on the teacher's split "
                "(--split-seed %d)",
                teacher.root,
                len(seen),
                len(validation),
                resolve_config(teacher.config).data_seed,
            )

    def to(self, device: torch.device | str) -> Teacher:
        """Move the teacher's model to ``device`` (the student's)."""
        self.model.to(device)
        return self

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` P(pneumonia) of ``(B, 1, H, W)`` images in [0, 1], at the teacher's size."""
        if images.shape[-1] != self.image_size or images.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", antialias=True)
        return torch.sigmoid(self.model(images).float())
