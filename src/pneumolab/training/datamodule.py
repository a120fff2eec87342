"""The run's split as Lightning data, on one process or several (DDP).

The split is computed once, by rank 0, and written to the run's ``split.csv`` before training
starts; every rank reads that file in :meth:`XrayDataModule.setup` (after Lightning's barrier),
checks that it holds the same list as rank 0, and decodes the images itself.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from pneumolab.config import TrainConfig
from pneumolab.data.dataset import DecodedImages, XrayDataset, decode_samples
from pneumolab.data.layout import Sample
from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_labels
from pneumolab.data.transforms import BatchAugmentation, normalize_intensity
from pneumolab.run import RunDir
from pneumolab.training.distributed import check_same_on_every_rank
from pneumolab.training.frozen import FrozenBackbone

log = logging.getLogger(__name__)

VAL_BATCH_SIZE = 128


def num_classes(task: str) -> int:
    """Classes of the training targets: 2 (binary) or 3 (NORMAL / BACTERIAL / VIRAL)."""
    return len(SUBTYPE_NAMES) if task == "three_class" else 2


def training_targets(samples: list[Sample], task: str) -> torch.Tensor:
    """Float 0/1 pneumonia labels (binary), or long subtype indices (three_class)."""
    if task == "three_class":
        return torch.tensor(subtype_labels(samples), dtype=torch.long)
    return torch.tensor([s.label for s in samples], dtype=torch.float32)


class WithIndex(Dataset):
    """A dataset's items with their index appended, so that validation can drop the samples
    a distributed sampler repeats to give every rank as many."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return (*self.dataset[index], index)


def _decode(samples: list[Sample], image_size: int, name: str) -> DecodedImages:
    decoded = decode_samples(samples, image_size)
    if decoded.skipped:
        log.warning("%s: skipped %d unreadable image(s)", name, len(decoded.skipped))
    return decoded


class XrayDataModule(L.LightningDataModule):
    """Train and validation data of ``run`` (its ``split.csv``) under ``data_root``: decoded
    images with augmentation, or, with ``frozen``, cached backbone features.

    ``train_samples`` and ``class_counts`` are known after :meth:`setup`; what the feature
    cache reused and computed is kept in the checkpoints (``state_dict``)."""

    def __init__(
        self,
        run: RunDir,
        data_root: Path,
        config: TrainConfig,
        frozen: FrozenBackbone | None = None,
    ) -> None:
        super().__init__()
        self.run, self.data_root, self.config, self.frozen = run, data_root, config, frozen
        self.train_samples: list[Sample] = []
        self.class_counts: list[int] = []
        self.feature_cache: dict[str, Any] | None = None
        self._val_images: DecodedImages | None = None
        self._train_images: DecodedImages | None = None
        self._datasets: tuple[Dataset, Dataset] | None = None
        self.augmentation = BatchAugmentation(
            config.augment_strength, acquisition=config.augmentation == "acquisition"
        )

    @property
    def _trainer(self) -> L.Trainer:
        assert self.trainer is not None, "attached to a Trainer by fit()"
        return self.trainer

    def setup(self, stage: str) -> None:
        check_same_on_every_rank(
            self._trainer, self.run.split.read_text(encoding="utf-8"), str(self.run.split)
        )
        started = time.perf_counter()
        train_images = self.train_images()
        val_images = self.val_images()
        log.info(
            "decoded %d train + %d val images in %.1fs",
            len(train_images.samples),
            len(val_images.samples),
            time.perf_counter() - started,
        )
        self.train_samples = train_images.samples
        task = self.config.task
        train_targets = training_targets(train_images.samples, task)
        val_targets = training_targets(val_images.samples, task)
        counts = np.bincount(train_targets.long().numpy(), minlength=num_classes(task))
        self.class_counts = counts.tolist()
        if self.frozen is not None:
            samples = train_images.samples + val_images.samples
            pixels = torch.cat([train_images.pixels, val_images.pixels])
            features, stats = self.frozen.features(self._trainer, samples, pixels)
            self.feature_cache = asdict(stats)
            n_train = len(train_images.samples)
            self._datasets = (
                TensorDataset(features[:n_train], train_targets),
                TensorDataset(features[n_train:], val_targets),
            )
            return
        self._datasets = (
            XrayDataset(train_images, train_targets),
            XrayDataset(val_images, val_targets),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Image batches arrive as uint8 on the training device: augmented (training only),
        intensity-normalised and scaled to [0, 1] there, as whole batches (cached features pass
        through)."""
        if self.frozen is not None:
            return batch
        images, *rest = batch
        if self._trainer.training:
            images = self.augmentation(images)
        images = normalize_intensity(images, self.config.intensity).float().div_(255.0)
        return (images, *rest)

    @property
    def size(self) -> int:
        return self.config.image_size

    def train_images(self) -> DecodedImages:
        """The decoded training images (decoded on first use, like :meth:`val_images`)."""
        if self._train_images is None:
            samples = self.run.read_split(self.data_root, "train")
            self._train_images = _decode(samples, self.size, "train")
        return self._train_images

    def val_images(self) -> DecodedImages:
        """The decoded validation images (decoded on first use, e.g. after ``ddp_spawn``,
        whose worker processes kept theirs)."""
        if self._val_images is None:
            samples = self.run.read_split(self.data_root, "val")
            self._val_images = _decode(samples, self.size, "val")
        return self._val_images

    def train_dataloader(self) -> DataLoader:
        assert self._datasets is not None, "setup() first"
        dataset = self._datasets[0]
        per_process = math.ceil(len(dataset) / self._trainer.world_size)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=self.config.batch_size,
            shuffle=True,
            num_workers=self.config.num_workers,
            # not persistent: persistent workers draw their seed from the torch RNG once per
            # fit, so a resumed fit drew once more and shuffled and augmented otherwise after
            persistent_workers=False,
            drop_last=per_process > self.config.batch_size,
        )

    def val_dataloader(self) -> DataLoader:
        assert self._datasets is not None, "setup() first"
        return DataLoader(WithIndex(self._datasets[1]), batch_size=VAL_BATCH_SIZE)

    def state_dict(self) -> dict[str, Any]:
        return {"feature_cache": self.feature_cache} if self.feature_cache else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.feature_cache = state_dict.get("feature_cache", self.feature_cache)
