"""Training phase 3: fit a built model on a prepared split with Lightning, keep the best epoch."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader, TensorDataset

from pneumolab.choices import Precision
from pneumolab.config import TrainConfig
from pneumolab.data.dataset import DecodedImages, XrayDataset, decode_samples
from pneumolab.data.layout import Sample
from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_labels
from pneumolab.data.transforms import train_augmentation
from pneumolab.errors import PneumolabError
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir
from pneumolab.run_meta import FeatureCacheStats, TrainingSummary
from pneumolab.training.callbacks import HistoryCSV, progress_display
from pneumolab.training.feature_cache import FeatureCache
from pneumolab.training.frozen import FeatureHead, frozen_datasets
from pneumolab.training.module import ClassifierModule
from pneumolab.training.split import Split
from pneumolab.training.strategies import optimizer_groups
from pneumolab.training.tracking import experiment_logger

log = logging.getLogger(__name__)


class TrainingInterrupted(PneumolabError):
    """Training stopped before its last epoch; the run can be resumed from its last checkpoint."""


@dataclass
class BuiltModel:
    """A classifier ready to train (strategy applied) and, under ``frozen``, its feature cache."""

    model: XrayClassifier
    feature_cache: FeatureCache | None = None


@dataclass
class Fitted:
    """The best epoch's model (on the CPU, fp32), the decoded validation images, and how the
    training went."""

    model: XrayClassifier
    val_images: DecodedImages
    summary: TrainingSummary
    logger: Logger | None = None
    """The experiment tracker (``TrainConfig.tracking``), left open for the run's files."""
    train_images: DecodedImages | None = None
    """The decoded training images (the OOD model is fitted on their features)."""
    train_features: np.ndarray | None = None
    """Their cached backbone features under the ``frozen`` strategy (the trained model's own)."""


def resolve_precision(requested: Precision) -> Literal["32", "bf16-mixed", "16-mixed"]:
    """``auto``: bf16 autocast on a GPU that supports it or a CPU with AVX512-BF16/AMX, else fp32."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "32"


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def num_classes(task: str) -> int:
    """Classes of the training targets: 2 (binary) or 3 (NORMAL / BACTERIAL / VIRAL)."""
    return len(SUBTYPE_NAMES) if task == "three_class" else 2


def training_targets(samples: list[Sample], task: str) -> torch.Tensor:
    """Float 0/1 pneumonia labels (binary), or long subtype indices (three_class)."""
    if task == "three_class":
        return torch.tensor(subtype_labels(samples), dtype=torch.long)
    return torch.tensor([s.label for s in samples], dtype=torch.float32)


def _loader(dataset: XrayDataset | TensorDataset, config: TrainConfig, shuffle: bool) -> DataLoader:
    # cached features need no worker processes; images are augmented in workers
    workers = config.num_workers if shuffle and isinstance(dataset, XrayDataset) else 0
    return DataLoader(
        dataset,
        batch_size=config.batch_size if shuffle else 128,
        shuffle=shuffle,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=shuffle and len(dataset) > config.batch_size,
    )


def _decode(split: Split) -> tuple[DecodedImages, DecodedImages]:
    started = time.perf_counter()
    decoded = [
        decode_samples(samples, split.config.image_size) for samples in (split.train, split.val)
    ]
    for name, images in zip(("train", "val"), decoded, strict=True):
        if images.skipped:
            log.warning("%s: skipped %d unreadable image(s)", name, len(images.skipped))
    log.info(
        "decoded %d train + %d val images in %.1fs",
        len(decoded[0].samples),
        len(decoded[1].samples),
        time.perf_counter() - started,
    )
    return decoded[0], decoded[1]


def _module_and_data(
    config: TrainConfig, built: BuiltModel, images: tuple[DecodedImages, DecodedImages], bf16: bool
) -> tuple[ClassifierModule, DataLoader, DataLoader, FeatureCacheStats | None]:
    """The LightningModule and the loaders: images (augmented for training), or cached backbone
    features under the ``frozen`` strategy."""
    model, targets = built.model, tuple(training_targets(i.samples, config.task) for i in images)
    fit_model: XrayClassifier | FeatureHead = model
    train_data: XrayDataset | TensorDataset
    val_data: XrayDataset | TensorDataset
    stats = None
    if built.feature_cache is not None:
        fit_model, train_data, val_data, cache_stats = frozen_datasets(
            model, built.feature_cache, config.intensity, *images, (targets[0], targets[1]), bf16
        )
        stats = FeatureCacheStats(**asdict(cache_stats))
    else:
        augment = train_augmentation(config.image_size, config.augment_strength)
        train_data = XrayDataset(images[0], augment, config.intensity, targets[0])
        val_data = XrayDataset(images[1], intensity=config.intensity, targets=targets[1])
    class_counts = np.bincount(targets[0].long().numpy(), minlength=num_classes(config.task))
    backbone_lr_scale = config.backbone_lr_scale if config.pretrained else 1.0
    module = ClassifierModule(
        fit_model,
        class_counts.tolist(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        param_groups=optimizer_groups(model.backbone, config.lr, backbone_lr_scale),
    )
    loaders = _loader(train_data, config, True), _loader(val_data, config, False)
    return module, *loaders, stats


def _trainer(
    config: TrainConfig,
    run: RunDir,
    precision: Literal["32", "bf16-mixed", "16-mixed"],
    callbacks: Sequence[L.Callback],
    logger: Logger | None,
) -> tuple[L.Trainer, ModelCheckpoint]:
    """Lightning's Trainer: best and last checkpoints, early stopping, history.csv, progress,
    and the experiment ``logger`` if any."""
    mode = "max" if config.monitor == "val_auc" else "min"
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints, filename="best", monitor=config.monitor, mode=mode, save_last=True
    )
    progress = progress_display()
    stopping = EarlyStopping(
        monitor=config.monitor, mode=mode, patience=config.early_stopping_patience
    )
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=precision,
        callbacks=[checkpoint, stopping, HistoryCSV(run.history), progress, *callbacks],
        logger=logger or False,
        log_every_n_steps=1,
        enable_progress_bar=isinstance(progress, ProgressBar),
        deterministic=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    return trainer, checkpoint


def fit(
    run: RunDir,
    split: Split,
    built: BuiltModel,
    resume: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> Fitted:
    """Train the built model on ``split`` (checkpoints, history.csv in ``run``; ``resume``
    continues from the last checkpoint) and load the best epoch's weights into it. Ctrl+C raises
    :class:`TrainingInterrupted` after the last finished epoch was saved."""
    config, started = split.config, time.perf_counter()
    images = _decode(split)
    precision = resolve_precision(config.precision)
    module, train_loader, val_loader, cache_stats = _module_and_data(
        config, built, images, bf16=precision.startswith("bf16")
    )
    logger = experiment_logger(config, run)
    trainer, checkpoint = _trainer(config, run, precision, callbacks, logger)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            resume_from = run.last_checkpoint if resume else None
            trainer.fit(module, train_loader, val_loader, ckpt_path=resume_from)
    except SystemExit:  # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown
        if trainer.interrupted:
            raise TrainingInterrupted(
                "training interrupted; continue it with `pneumolab train --resume "
                f"--data {split.data_root} --out {run.root}`"
            ) from None
        raise
    best = torch.load(
        checkpoint.best_model_path or run.last_checkpoint, map_location="cpu", weights_only=True
    )
    module.load_state_dict(best["state_dict"])  # module.model is the model or its head
    model = built.model.cpu().float()
    summary = TrainingSummary(
        strategy=config.strategy,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        best_epoch=best.get("epoch"),
        train_seconds=round(time.perf_counter() - started, 1),
        feature_cache=cache_stats,
    )
    cached = train_loader.dataset
    features = cached.tensors[0].numpy() if isinstance(cached, TensorDataset) else None
    return Fitted(model, images[1], summary, logger, images[0], features)
