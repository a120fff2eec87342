"""Every list of choices in one place: the ``Literal`` types that the config, the run metadata,
the Python API and the command line share (the CLI derives its ``choices`` from them)."""

from __future__ import annotations

from typing import Literal, get_args

Task = Literal["binary", "three_class"]
Strategy = Literal["finetune", "frozen", "partial"]
HeadInit = Literal["fan_in", "zero", "timm"]
"""How a pretrained backbone's fresh classifier head starts: PyTorch's layer default
U(-1/sqrt(fan_in), 1/sqrt(fan_in)), all zero (BiT), or as the architecture initialises it in timm."""
Intensity = Literal["none", "equalize", "clahe"]
Augmentation = Literal["standard", "acquisition"]
Monitor = Literal["last", "val_auc", "val_loss"]
Precision = Literal["auto", "32", "bf16-mixed", "16-mixed"]
Accelerator = Literal["auto", "cpu", "gpu"]
DistributedStrategy = Literal["auto", "ddp", "ddp_spawn"]
LrScaling = Literal["sqrt", "linear", "none"]
BackendName = Literal["torch", "onnx", "onnx-int8", "openvino"]
ComparisonBackend = Literal["torch", "onnx"]
"""What scores a comparison or study: PyTorch, or each network exported to ONNX first."""
ExportFormat = Literal["onnx", "onnx-int8", "openvino"]
Engine = Literal["local", "ray"]
"""What runs batch prediction: this process, or Ray Data."""
Split = Literal["val", "test"]
Tracking = Literal["csv", "tensorboard", "mlflow"]
PairedCriterion = Literal["roc_auc", "shift_roc_auc"]
"""Selection criteria with per-image scores, so a paired bootstrap can tell models apart."""
SelectBy = Literal[PairedCriterion, "worst_roc_auc", "shift_specificity", "accuracy", "specificity"]

ONNX_OPSETS = range(11, 21)
"""The ONNX opsets an export may ask for: those of PyTorch's TorchScript exporter from 11, the
first whose shapes can vary (below it PyTorch warns that the batch axis may not be dynamic)."""
DEFAULT_OPSET = 17

STRATEGIES: tuple[str, ...] = get_args(Strategy)
INTENSITIES: tuple[str, ...] = get_args(Intensity)
BACKENDS: tuple[str, ...] = get_args(BackendName)
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
ENGINES: tuple[str, ...] = get_args(Engine)
SPLITS: tuple[str, ...] = get_args(Split)
PAIRED_CRITERIA: tuple[str, ...] = get_args(PairedCriterion)
