"""Train a classifier end to end: split, fit, keep the best epoch, choose the threshold, write the run."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar
from safetensors.torch import save_file
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, TensorDataset

from pneumolab.choices import Precision
from pneumolab.config import TrainConfig, resolve_config, save_config
from pneumolab.data.dataset import DecodedImages, XrayDataset, decode_samples
from pneumolab.data.layout import Sample, find_splits, scan_split
from pneumolab.data.patients import grouped_split
from pneumolab.data.subtypes import SUBTYPE_NAMES, subtype_labels
from pneumolab.data.transforms import train_augmentation
from pneumolab.errors import PneumolabError, RunDirError
from pneumolab.evaluation.decision import decision_rule
from pneumolab.evaluation.metrics import binary_metrics
from pneumolab.evaluation.subtypes import subtype_metrics
from pneumolab.inference.predictor import predict_class_probabilities, predict_pixels
from pneumolab.models.classifier import XrayClassifier
from pneumolab.models.registry import create_classifier
from pneumolab.reporting.model_card import write_model_card
from pneumolab.run import RunDir, write_predictions
from pneumolab.run_meta import FeatureCacheStats, TrainingSummary, describe_run
from pneumolab.training.callbacks import HistoryCSV, progress_display
from pneumolab.training.frozen import FeatureHead, cache_for, frozen_datasets
from pneumolab.training.module import ClassifierModule
from pneumolab.training.strategies import apply_strategy, optimizer_groups

log = logging.getLogger(__name__)


class TrainingInterrupted(PneumolabError):
    """Training stopped before its last epoch; the run can be resumed from its last checkpoint."""


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


def _subset(samples: list[Sample], size: int | None, seed: int) -> list[Sample]:
    if size is None or size >= len(samples):
        return samples
    labels = [s.label for s in samples]
    kept, _ = train_test_split(samples, train_size=size, stratify=labels, random_state=seed)
    return sorted(kept, key=lambda s: s.path)


def num_classes(task: str) -> int:
    """Classes of the training targets: 2 (binary) or 3 (NORMAL / BACTERIAL / VIRAL)."""
    return len(SUBTYPE_NAMES) if task == "three_class" else 2


def training_targets(samples: list[Sample], task: str) -> torch.Tensor:
    """Float 0/1 pneumonia labels (binary), or long subtype indices (three_class)."""
    if task == "three_class":
        return torch.tensor(subtype_labels(samples), dtype=torch.long)
    return torch.tensor([s.label for s in samples], dtype=torch.float32)


def prepare_run_dir(out_dir: Path, resume: bool) -> RunDir:
    """Create a fresh run directory, or check that ``--resume`` has something to resume."""
    run = RunDir(Path(out_dir))
    if resume:
        if not run.last_checkpoint.is_file() or not run.config.is_file():
            raise RunDirError(
                f"{run.root}: nothing to resume (no config.yaml and checkpoints/last.ckpt)"
            )
        if run.is_complete():
            raise RunDirError(f"{run.root}: this run already finished; nothing to resume")
        return run
    if run.root.exists() and any(run.root.iterdir()):
        hint = " or add --resume to continue it" if run.last_checkpoint.is_file() else ""
        raise RunDirError(
            f"{run.root}: already exists and is not empty; choose another --out{hint}"
        )
    run.root.mkdir(parents=True, exist_ok=True)
    return run


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


def _report_skipped(name: str, decoded: DecodedImages) -> None:
    if decoded.skipped:
        log.warning("%s: skipped %d unreadable image(s)", name, len(decoded.skipped))


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    resume: bool = False,
    callbacks: Sequence[L.Callback] = (),
) -> RunDir:
    """Train on ``data_dir/train`` into ``out_dir``; with ``resume``, continue an interrupted run.

    ``callbacks`` are added to Lightning's. Returns the finished :class:`RunDir`; raises
    :class:`TrainingInterrupted` when stopped (Ctrl+C), after the last finished epoch was saved.
    """
    data_root = Path(data_dir).resolve()
    if resume:
        run = prepare_run_dir(Path(out_dir), resume)
        config = resolve_config(run.config)
        train_samples, val_samples = (
            run.read_split(data_root, "train"),
            run.read_split(data_root, "val"),
        )
    else:
        config = config or TrainConfig()
        all_train = _subset(
            scan_split(find_splits(data_root)["train"]), config.max_train_images, config.seed
        )
        train_samples, val_samples = grouped_split(all_train, config.val_fraction, config.seed)
    L.seed_everything(config.seed, workers=True, verbose=False)
    # before the run directory exists: unknown names and missing weights fail fast, leave nothing.
    # A resumed checkpoint holds every trained weight, except under `frozen`: the head only.
    load_pretrained = config.pretrained and (not resume or config.strategy == "frozen")
    model = create_classifier(
        config.model,
        pretrained=load_pretrained,
        weights=config.weights,
        num_classes=1 if config.task == "binary" else num_classes(config.task),
    )
    apply_strategy(model.backbone, config.strategy, config.unfreeze_stages)
    feature_cache = cache_for(config) if config.strategy == "frozen" else None
    if config.task == "three_class":
        subtype_labels(train_samples + val_samples)  # every pneumonia file name has its subtype
    if not resume:
        run = prepare_run_dir(Path(out_dir), resume)
        save_config(config, run.config)
        run.write_split(data_root, train_samples, val_samples)

    started = time.perf_counter()
    train_images = decode_samples(train_samples, config.image_size)
    val_images = decode_samples(val_samples, config.image_size)
    _report_skipped("train", train_images)
    _report_skipped("val", val_images)
    log.info(
        "decoded %d train + %d val images in %.1fs",
        len(train_images.samples),
        len(val_images.samples),
        time.perf_counter() - started,
    )

    precision = resolve_precision(config.precision)
    train_targets, val_targets = (
        training_targets(images.samples, config.task) for images in (train_images, val_images)
    )
    cache_stats = None
    fit_model: XrayClassifier | FeatureHead
    train_data: XrayDataset | TensorDataset
    val_data: XrayDataset | TensorDataset
    if feature_cache is not None:
        fit_model, train_data, val_data, cache_stats = frozen_datasets(
            model,
            feature_cache,
            config.intensity,
            train_images,
            val_images,
            (train_targets, val_targets),
            bf16=precision.startswith("bf16"),
        )
    else:
        fit_model = model
        train_data = XrayDataset(
            train_images,
            train_augmentation(config.image_size, config.augment_strength),
            config.intensity,
            train_targets,
        )
        val_data = XrayDataset(val_images, intensity=config.intensity, targets=val_targets)
    class_counts = np.bincount(train_targets.long().numpy(), minlength=num_classes(config.task))
    backbone_lr_scale = config.backbone_lr_scale if config.pretrained else 1.0
    module = ClassifierModule(
        fit_model,
        class_counts.tolist(),
        lr=config.lr,
        weight_decay=config.weight_decay,
        param_groups=optimizer_groups(model.backbone, config.lr, backbone_lr_scale),
    )
    mode = "max" if config.monitor == "val_auc" else "min"
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints, filename="best", monitor=config.monitor, mode=mode, save_last=True
    )
    progress = progress_display()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=precision,
        callbacks=[
            checkpoint,
            EarlyStopping(
                monitor=config.monitor, mode=mode, patience=config.early_stopping_patience
            ),
            HistoryCSV(run.history),
            progress,
            *callbacks,
        ],
        logger=False,
        enable_progress_bar=isinstance(progress, ProgressBar),
        deterministic=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    train_loader = _loader(train_data, config, True)
    val_loader = _loader(val_data, config, False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(
                module, train_loader, val_loader, ckpt_path=run.last_checkpoint if resume else None
            )
    except SystemExit:  # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown
        if trainer.interrupted:
            raise TrainingInterrupted(
                f"training interrupted; continue it with `pneumolab train --resume --data {data_root} --out {run.root}`"
            ) from None
        raise
    fit_seconds = time.perf_counter() - started

    best = torch.load(
        checkpoint.best_model_path or run.last_checkpoint, map_location="cpu", weights_only=True
    )
    module.load_state_dict(best["state_dict"])  # module.model is the model or its head
    model = model.cpu().float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run.weights)
    training = TrainingSummary(
        strategy=config.strategy,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        best_epoch=best.get("epoch"),
        train_seconds=round(fit_seconds, 1),
        feature_cache=None if cache_stats is None else FeatureCacheStats(**asdict(cache_stats)),
    )
    official_val = find_splits(data_root).get("val")
    _finish_run(run, config, model, val_images, training, official_val)
    return run


def _finish_run(
    run: RunDir,
    config: TrainConfig,
    model: XrayClassifier,
    val_images: DecodedImages,
    training: TrainingSummary,
    official_val: Path | None,
) -> None:
    """Score validation with the best weights, choose the decision rule on it
    (:func:`decision_rule`), write predictions, meta and MODEL_CARD.md.

    The dataset's own small ``val/`` folder, when present, is scored and reported (not used).
    """
    probs = predict_pixels(model, val_images.pixels, config.intensity)
    labels = np.array([s.label for s in val_images.samples])
    decision = decision_rule(
        labels, probs, f"validation split of {run.root.name}", config.target_sensitivity
    )
    write_predictions(run.val_predictions, val_images.samples, probs)
    subtypes = None
    if config.task == "three_class":
        class_probs = predict_class_probabilities(model, val_images.pixels, config.intensity)
        subtypes = subtype_metrics(np.array(subtype_labels(val_images.samples)), class_probs)
    official_metrics = None
    if official_val is not None:
        official = decode_samples(scan_split(official_val), config.image_size)
        official_probs = predict_pixels(model, official.pixels, config.intensity)
        official_labels = np.array([s.label for s in official.samples])
        official_metrics = binary_metrics(official_labels, official_probs, decision.threshold)
    run.write_meta(
        describe_run(
            model=config.model,
            image_size=config.image_size,
            intensity=config.intensity,
            task=config.task,
            mean=model.mean.flatten().tolist(),
            std=model.std.flatten().tolist(),
            training=training,
            decision=decision,
            val_subtype_metrics=subtypes,
            official_val_metrics=official_metrics,
        )
    )
    write_model_card(run)
