"""Train a classifier end to end: split, fit, keep the best epoch, choose the threshold, write the run."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from safetensors.torch import save_file
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader

import pneumolab
from pneumolab.config import TrainConfig, resolve_config, save_config
from pneumolab.data.dataset import DecodedImages, XrayDataset, decode_samples
from pneumolab.data.layout import CLASS_NAMES, Sample, find_splits, scan_split
from pneumolab.data.patients import grouped_split
from pneumolab.data.transforms import train_augmentation
from pneumolab.errors import PneumolabError, RunDirError
from pneumolab.evaluation.calibration import fit_temperature
from pneumolab.evaluation.metrics import binary_metrics, threshold_metrics
from pneumolab.evaluation.operating_points import choose_operating_points
from pneumolab.inference.predictor import predict_pixels
from pneumolab.models.classifier import XrayClassifier
from pneumolab.models.registry import create_classifier
from pneumolab.reporting.model_card import write_model_card
from pneumolab.run import RunDir, write_predictions
from pneumolab.training.callbacks import HistoryCSV
from pneumolab.training.module import ClassifierModule

log = logging.getLogger(__name__)


class TrainingInterrupted(PneumolabError):
    """Training stopped before its last epoch; the run can be resumed from its last checkpoint."""


def resolve_precision(requested: str) -> str:
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


def _loader(dataset: XrayDataset, config: TrainConfig, shuffle: bool) -> DataLoader:
    workers = config.num_workers if shuffle else 0
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
        run = prepare_run_dir(Path(out_dir), resume)  # only once the data is known to be usable
        save_config(config, run.config)
        run.write_split(data_root, train_samples, val_samples)
    L.seed_everything(config.seed, workers=True, verbose=False)

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

    model = create_classifier(
        config.model, pretrained=config.pretrained and not resume, weights=config.weights
    )
    positive_fraction = float(np.mean([s.label for s in train_images.samples]))
    module = ClassifierModule(
        model, positive_fraction, lr=config.lr, weight_decay=config.weight_decay
    )
    mode = "max" if config.monitor == "val_auc" else "min"
    checkpoint = ModelCheckpoint(
        dirpath=run.checkpoints, filename="best", monitor=config.monitor, mode=mode, save_last=True
    )
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=resolve_precision(config.precision),
        callbacks=[
            checkpoint,
            EarlyStopping(
                monitor=config.monitor, mode=mode, patience=config.early_stopping_patience
            ),
            HistoryCSV(run.history),
            RichProgressBar(),
            *callbacks,
        ],
        logger=False,
        deterministic=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
    )
    train_loader = _loader(
        XrayDataset(
            train_images,
            train_augmentation(config.image_size, config.augment_strength),
            config.intensity,
        ),
        config,
        True,
    )
    val_loader = _loader(XrayDataset(val_images, intensity=config.intensity), config, False)
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
    state = {k.removeprefix("model."): v for k, v in best["state_dict"].items()}
    model.load_state_dict(state)
    model = model.cpu().float()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, run.weights)
    official_val = find_splits(data_root).get("val")
    _finish_run(run, config, model, val_images, fit_seconds, best.get("epoch"), official_val)
    return run


def _finish_run(
    run: RunDir,
    config: TrainConfig,
    model: XrayClassifier,
    val_images: DecodedImages,
    fit_seconds: float,
    best_epoch: int | None,
    official_val: Path | None,
) -> None:
    """Score validation with the best weights, choose the operating points (the first, at the
    target sensitivity, is the default threshold) and the temperature, write predictions, meta
    and MODEL_CARD.md.

    The dataset's own small ``val/`` folder, when present, is scored and reported (not used).
    """
    probs = predict_pixels(model, val_images.pixels, config.intensity)
    labels = np.array([s.label for s in val_images.samples])
    points = choose_operating_points(
        labels, probs, f"validation split of {run.root.name}", config.target_sensitivity
    )
    threshold = points[0].threshold
    write_predictions(run.val_predictions, val_images.samples, probs)
    official_metrics = None
    if official_val is not None:
        official = decode_samples(scan_split(official_val), config.image_size)
        official_probs = predict_pixels(model, official.pixels, config.intensity)
        official_labels = np.array([s.label for s in official.samples])
        official_metrics = binary_metrics(official_labels, official_probs, threshold)
    run.write_meta(
        {
            "model": config.model,
            "image_size": config.image_size,
            "intensity": config.intensity,
            "preprocessing": {
                "color": "grayscale, replicated to the model's input channels",
                "resize": f"{config.image_size}x{config.image_size}, bilinear, aspect ratio not kept",
                "intensity": config.intensity,
                "scale": "pixels / 255",
                "mean": model.mean.flatten().tolist(),
                "std": model.std.flatten().tolist(),
            },
            "threshold": threshold,
            "threshold_rule": f"highest threshold with validation sensitivity >= {config.target_sensitivity}",
            "default_operating_point": points[0].name,
            "operating_points": {
                p.name: p.to_dict() | {"val_metrics": threshold_metrics(labels, probs, p.threshold)}
                for p in points
            },
            "temperature": fit_temperature(labels, probs),
            "class_names": list(CLASS_NAMES),
            "best_epoch": best_epoch,
            "train_seconds": round(fit_seconds, 1),
            "val_metrics": binary_metrics(labels, probs, threshold),
            "official_val_metrics": official_metrics,
            "pneumolab_version": pneumolab.__version__,
            "torch_version": torch.__version__,
        }
    )
    write_model_card(run)
