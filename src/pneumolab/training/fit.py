"""Training phase 3: fit a built model with Lightning (one process or several: DDP), keep the
epoch its monitor picks (the last by default)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import (
    EMAWeightAveraging,
    ProgressBar,
    StochasticWeightAveraging,
)
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pneumolab.choices import Precision
from pneumolab.config import TrainConfig
from pneumolab.data.dataset import DecodedImages
from pneumolab.errors import ConfigError, TrainingInterrupted
from pneumolab.models.classifier import XrayClassifier
from pneumolab.run import RunDir
from pneumolab.run_meta import DistributedTraining, FeatureCacheStats, TrainingSummary
from pneumolab.training.callbacks import (
    FineTuningEarlyStopping,
    HistoryCSV,
    RandomStates,
    RunCheckpoint,
    TrainingClock,
    progress_display,
)
from pneumolab.training.checkpoint_io import (
    AtomicCheckpointIO,
    RunSettings,
    check_checkpoint,
    check_resumed_settings,
)
from pneumolab.training.datamodule import XrayDataModule
from pneumolab.training.distill import Teacher
from pneumolab.training.distributed import (
    ProcessGroupExit,
    check_launch,
    cluster_plugins,
    lightning_strategy,
    lr_factor,
)
from pneumolab.training.feature_cache import FeatureCache
from pneumolab.training.frozen import FrozenBackbone
from pneumolab.training.hardware import TrainingCompute, cpu_has_bf16
from pneumolab.training.module import ClassifierModule
from pneumolab.training.sigterm import SynchronisedSigterm
from pneumolab.training.strategies import optimizer_groups
from pneumolab.training.tracking import experiment_logger

CallbackT = TypeVar("CallbackT", bound=L.Callback)


@dataclass
class BuiltModel:
    """A classifier ready to train (strategy applied) and, under ``frozen``, its feature cache;
    with distillation, its teacher."""

    model: XrayClassifier
    feature_cache: FeatureCache | None = None
    teacher: Teacher | None = None


@dataclass
class Fitted:
    """The kept epoch's model (on the CPU, fp32), the decoded validation images, and how the
    training went."""

    model: XrayClassifier
    val_images: DecodedImages
    summary: TrainingSummary
    logger: Logger | None = None
    """The experiment tracker (``TrainConfig.tracking``), left open for the run's files."""
    train_images: DecodedImages | None = None
    """The decoded training images (the OOD model is fitted on their features)."""


def resolve_precision(
    requested: Precision, accelerator: str = "auto"
) -> Literal["32", "bf16-mixed", "16-mixed"]:
    """``auto``: bf16 autocast on a GPU that supports it or a CPU with AVX512-BF16/AMX, else
    fp32; the GPU's rule where training runs on it (``accelerator`` not ``cpu``). ConfigError
    for ``16-mixed`` on a CPU: Lightning would train in bf16-mixed instead, while config.yaml
    and the model card said fp16."""
    on_gpu = accelerator != "cpu" and torch.cuda.is_available()
    if requested == "16-mixed" and not on_gpu:
        raise ConfigError(
            "precision 16-mixed (fp16 autocast) needs a GPU; on a CPU ask for bf16-mixed "
            "(fast where the CPU has AVX512-BF16 or AMX) or 32"
        )
    if requested != "auto":
        return requested
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if torch.backends.mkldnn.is_available() and cpu_has_bf16() else "32"


def build_trainer(config: TrainConfig, run: RunDir, callbacks: Sequence[L.Callback]) -> L.Trainer:
    """Lightning's Trainer for ``config``: devices, nodes and strategy (DDP across processes),
    precision, best and last checkpoints, early stopping, history.csv, progress. Built before
    anything is written: it knows this process's rank. With ``ema_decay``, Lightning's
    EMA callback keeps the averaged weights, which validation scores and checkpoints hold; with
    ``swa_epochs``, Lightning's SWA callback replaces the schedule's tail and its final
    (batch-norm) epoch, which the run keeps, holds the average.
    ``monitor: last`` keeps the final epoch (``best.ckpt`` is then the latest) and never stops
    early; ``last.ckpt`` holds every finished epoch either way, for ``--resume``. A Lightning
    configuration error (say, ``accelerator: gpu`` without one) is a ConfigError."""
    check_launch(config.distributed_strategy, config.devices, config.num_nodes)
    monitor = None if config.monitor == "last" else config.monitor
    mode = "max" if config.monitor == "val_auc" else "min"
    # saved after HistoryCSV's row: a resume neither loses nor repeats one
    checkpoints = [
        RunCheckpoint(
            from_epoch=config.head_epochs,
            dirpath=run.checkpoints,
            filename="best",
            monitor=monitor,
            mode=mode,
            save_last=monitor is None,
            save_on_train_epoch_end=True,
        )
    ]
    if monitor is not None:  # Lightning writes `save_last` only with a new best: its own callback
        checkpoints.append(
            RunCheckpoint(dirpath=run.checkpoints, filename="last", save_on_train_epoch_end=True)
        )
    progress = progress_display()
    stopping = (
        [
            FineTuningEarlyStopping(
                from_epoch=config.head_epochs,
                monitor=monitor,
                mode=mode,
                patience=config.early_stopping_patience,
            )
        ]
        if monitor
        else []
    )
    every = [
        *_weight_averaging(config),
        *checkpoints,
        *stopping,
        HistoryCSV(run.history),
        TrainingClock(),
        RandomStates(),
        RunSettings(config),
        TrainingCompute(),
        progress,
        *callbacks,
        ProcessGroupExit(),
        SynchronisedSigterm(),
    ]
    try:
        return L.Trainer(
            max_epochs=config.epochs,
            accelerator=config.accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=lightning_strategy(
                config.distributed_strategy, config.devices * config.num_nodes, config.head_epochs
            ),
            precision=resolve_precision(config.precision, config.accelerator),
            callbacks=every,
            logger=False,  # the experiment logger joins in fit(), once the run directory exists
            log_every_n_steps=1,
            enable_progress_bar=isinstance(progress, ProgressBar),
            deterministic=False,
            num_sanity_val_steps=0,
            enable_model_summary=False,
            plugins=[AtomicCheckpointIO(), *cluster_plugins()],
            default_root_dir=run.root,  # nothing of Lightning's own in the working directory
        )
    except MisconfigurationException as exc:
        raise ConfigError(
            f"accelerator {config.accelerator}, devices {config.devices}, "
            f"num_nodes {config.num_nodes}: {exc}"
        ) from None


def _weight_averaging(config: TrainConfig) -> list[L.Callback]:
    """Lightning's EMA or SWA callback, as the config asks (at most one: the config checks)."""
    if config.ema_decay:
        return [EMAWeightAveraging(decay=config.ema_decay)]
    if config.swa_epochs:
        return [
            StochasticWeightAveraging(
                swa_lrs=config.swa_lr,
                swa_epoch_start=config.epochs - config.swa_epochs + 1,
                annealing_epochs=1,
                device=None,
            )
        ]
    return []


def distributed_summary(trainer: L.Trainer, config: TrainConfig, lr: float) -> DistributedTraining:
    """How many processes trained, how, and the effective batch size and learning rate."""
    return DistributedTraining(
        processes=trainer.world_size,
        strategy=type(trainer.strategy).__name__,
        accelerator=type(trainer.accelerator).__name__,
        batch_size_per_process=config.batch_size,
        effective_batch_size=config.batch_size * trainer.world_size,
        lr_scaling=config.lr_scaling,
        lr=lr,
    )


def _module(
    config: TrainConfig, built: BuiltModel, frozen: FrozenBackbone | None, trainer: L.Trainer
) -> ClassifierModule:
    """The LightningModule (the model, or its head under ``frozen``; its teacher, if any), at
    the learning rate scaled for the number of processes; its class weights come from the data
    at set-up."""
    model = built.model
    lr = config.lr * lr_factor(config.lr_scaling, trainer.world_size)
    backbone_lr_scale = config.backbone_lr_scale if config.pretrained else 1.0
    return ClassifierModule(
        frozen.head() if frozen else model,
        lr=lr,
        weight_decay=config.weight_decay,
        param_groups=optimizer_groups(model.backbone, lr, backbone_lr_scale),
        label_smoothing=config.label_smoothing,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        teacher=built.teacher,
        distill_weight=config.distill_weight,
        head_epochs=config.head_epochs,
    )


def _run_fit(
    trainer: L.Trainer, module: ClassifierModule, data: XrayDataModule, resume: bool
) -> None:
    """``trainer.fit`` (from the last checkpoint when resuming); Ctrl+C and SIGTERM raise
    :class:`TrainingInterrupted` after the last finished epoch was saved (on several processes,
    a SIGTERM to any stops all at the same step: :class:`SynchronisedSigterm`)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            # SWA replaces the per-step one-cycle schedule with its own per-epoch one, as asked
            warnings.filterwarnings("ignore", message="SWA is currently only supported every epoch")
            # a resume writes into its own checkpoints folder, as it should
            warnings.filterwarnings("ignore", message="Checkpoint directory .* is not empty")
            resume_from = check_checkpoint(data.run.last_checkpoint) if resume else None
            if resume_from is not None:
                check_resumed_settings(resume_from, data.config, data.run.config)
            trainer.fit(module, datamodule=data, ckpt_path=resume_from)
    except SystemExit as exc:  # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown
        if not trainer.interrupted:
            raise
        sigterm = trainer.received_sigterm or isinstance(exc, SIGTERMException)
        signal = "SIGTERM" if sigterm else "SIGINT"
        if not data.run.last_checkpoint.is_file():
            raise TrainingInterrupted(
                "training interrupted before its first epoch ended: nothing to resume; delete "
                f"{data.run.root} and train again",
                signal,
            ) from None
        raise TrainingInterrupted(
            "training interrupted; continue it with `pneumolab train --resume "
            f"--data {data.data_root} --out {data.run.root}`",
            signal,
        ) from None


def fit(
    trainer: L.Trainer,
    run: RunDir,
    config: TrainConfig,
    data_root: Path,
    built: BuiltModel,
    resume: bool = False,
) -> Fitted | None:
    """Train the built model on the run's ``split.csv`` (checkpoints, history.csv in ``run``;
    ``resume`` continues from the last checkpoint) and, on rank 0, load the best epoch's weights
    into it; the other ranks of a multi-process run get None when training ends."""
    clock = _callback(trainer, TrainingClock)
    clock.restart()
    logger = experiment_logger(config, run)
    if logger is not None:
        trainer.logger = logger
    frozen = None
    if built.feature_cache is not None:
        bf16 = str(trainer.precision).startswith("bf16")
        cache = built.feature_cache.with_fields(autocast="bf16" if bf16 else "none")  # bf16 ≠ fp32
        frozen = FrozenBackbone(built.model, cache, config.intensity, bf16)
    data = XrayDataModule(run, data_root, config, frozen)
    module = _module(config, built, frozen, trainer)
    _run_fit(trainer, module, data, resume)
    if not trainer.is_global_zero:
        return None
    checkpoint = trainer.checkpoint_callback
    best_path = getattr(checkpoint, "best_model_path", "") or run.last_checkpoint
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    if not config.swa_epochs:  # SWA's average reaches the module after the last checkpoint
        module.load_state_dict(best["state_dict"])  # module.model is the model or its head
    model = built.model.cpu().float()
    cache_stats = (best.get(type(data).__qualname__) or {}).get("feature_cache")
    summary = TrainingSummary(
        strategy=config.strategy,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        best_epoch=_kept_epoch(best.get("epoch"), config),
        train_seconds=round(clock.seconds, 1),
        feature_cache=FeatureCacheStats(**cache_stats) if cache_stats else None,
        distributed=distributed_summary(trainer, config, module.lr),
        compute=_callback(trainer, TrainingCompute).record(trainer),
        teacher=module.teacher.record if module.teacher else None,
        unreadable=[
            str(sample.path)
            for sample, _ in (*data.train_images().skipped, *data.val_images().skipped)
        ],
    )
    return Fitted(model, data.val_images(), summary, trainer.logger, data.train_images())


def _callback(trainer: L.Trainer, kind: type[CallbackT]) -> CallbackT:
    """``trainer``'s callback of class ``kind`` (:func:`build_trainer` adds one of each)."""
    return next(c for c in trainer.callbacks if isinstance(c, kind))  # type: ignore[attr-defined]


def _kept_epoch(epoch: int | None, config: TrainConfig) -> int | None:
    """The epoch of the schedule whose weights the run kept (0-based): SWA's batch-norm pass is
    one more checkpointed epoch, yet the average it holds is the last scheduled epoch's."""
    return None if epoch is None else min(epoch, config.epochs - 1)
