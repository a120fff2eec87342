"""Every list of choices in one place: the ``Literal`` types that the config, the run metadata,
the Python API and the command line share (the CLI derives its ``choices`` from them)."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["binary", "three_class"]
Strategy = Literal["finetune", "frozen", "partial"]
Intensity = Literal["none", "equalize", "clahe"]
Augmentation = Literal["standard", "acquisition"]
Monitor = Literal["last", "val_auc", "val_loss"]
Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Accelerator = Literal["auto", "cpu", "gpu"]
DistributedStrategy = Literal["auto", "ddp", "ddp_spawn"]
LrScaling = Literal["sqrt", "linear", "none"]
BackendName = Literal["torch", "onnx", "onnx-int8", "openvino"]
Split = Literal["val", "test"]
Tracking = Literal["csv", "tensorboard", "mlflow"]
PairedCriterion = Literal["roc_auc", "shift_roc_auc"]
"""Selection criteria with per-image scores, so a paired bootstrap can tell models apart."""
SelectBy = Literal[PairedCriterion, "worst_roc_auc", "shift_specificity", "accuracy", "specificity"]

TASKS: tuple[str, ...] = get_args(Task)
STRATEGIES: tuple[str, ...] = get_args(Strategy)
INTENSITIES: tuple[str, ...] = get_args(Intensity)
BACKENDS: tuple[str, ...] = get_args(BackendName)
SPLITS: tuple[str, ...] = get_args(Split)
PAIRED_CRITERIA: tuple[str, ...] = get_args(PairedCriterion)
