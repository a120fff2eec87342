"""The models pneumolab documents and compares: what they are and where their weights come from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch

from pneumolab.models.registry import (
    WEIGHTS_DIR_ENV,
    check_model_name,
    find_local_weights,
    hub_offline,
    published_source,
)

STUDY_MODELS: dict[str, str] = {
    "pneumolab_cnn_small": "custom CNN",
    "pneumolab_cnn_separable": "custom CNN",
    "pneumolab_cnn_medium": "custom CNN",
    "vgg19": "VGG",
    "legacy_xception": "Xception",
    "mobilenetv2_100": "MobileNet",
    "tf_efficientnet_lite0": "EfficientNet",
    "tf_efficientnet_lite1": "EfficientNet",
    "tf_efficientnet_lite2": "EfficientNet",
    "efficientnet_b0": "EfficientNet",
    "resnet18": "ResNet",
    "resnet50": "ResNet",
    "densenet121": "DenseNet",
    "convnext_nano": "ConvNeXt",
}
"""The study's line-up (custom CNNs, VGG19, Xception) and the modern networks, by family."""


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``pneumolab models``."""

    name: str
    family: str
    parameters: int
    input_size: int
    weights: str


def count_parameters(name: str) -> int:
    """Parameters of ``name`` with a one-logit head, counted without allocating memory."""
    with torch.device("meta"):
        model = timm.create_model(name, num_classes=1)
    return sum(p.numel() for p in model.parameters())


def weights_source(name: str, weights: str | Path | None = None) -> str:
    """Where ImageNet weights for ``name`` would come from here: a local file, the hub, or none."""
    local = (
        find_local_weights(name, weights) if (weights or os.environ.get(WEIGHTS_DIR_ENV)) else None
    )
    if local is not None:
        given = weights is not None and Path(weights).is_file()  # not matched by name
        return f"local file {local}" + (" (given; training checks that it fits)" if given else "")
    hub = published_source(name)
    if hub is None:
        return "none (trained from scratch)"
    return f"hub {hub}" + (" (offline here: pass --weights)" if hub_offline() else "")


def describe_model(name: str, weights: str | Path | None = None) -> ModelInfo:
    """Family, parameter count, default input size and weights source of one model."""
    check_model_name(name)
    cfg = timm.models.get_pretrained_cfg(name)
    input_size = cfg.input_size[-1] if cfg is not None else 224
    family = STUDY_MODELS.get(name, "timm")
    return ModelInfo(
        name, family, count_parameters(name), input_size, weights_source(name, weights)
    )
