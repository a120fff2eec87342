"""The ``frozen`` strategy: backbone features computed once (cached on disk), head trained on them."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import timm
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pneumolab
from pneumolab.config import TrainConfig
from pneumolab.data.dataset import DecodedImages
from pneumolab.errors import ConfigError
from pneumolab.inference.predictor import score_batches
from pneumolab.models.classifier import XrayClassifier, pneumonia_logit
from pneumolab.models.registry import find_local_weights
from pneumolab.training.feature_cache import (
    CacheStats,
    FeatureCache,
    default_cache_dir,
    file_sha256,
)

log = logging.getLogger(__name__)


class FeatureHead(nn.Module):
    """The backbone's own classifier, applied to cached features: ``(B, D)`` in, ``(B,)``
    pneumonia logits out (per-class logits from :meth:`class_logits`).

    It shares its parameters with the full model, so training it trains the model's head."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def class_logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return pneumonia_logit(self.class_logits(features))


def weights_identity(config: TrainConfig) -> str:
    """What the pretrained weights are: the local file's SHA-256, else the hub source."""
    local = find_local_weights(config.model, config.weights)
    if local is not None:
        return f"sha256:{file_sha256(local)}"
    pretrained_cfg = timm.models.get_pretrained_cfg(config.model)
    source = pretrained_cfg and (pretrained_cfg.hf_hub_id or pretrained_cfg.url)
    return f"hub:{source or config.model}"


def cache_for(config: TrainConfig) -> FeatureCache:
    """The feature cache of this config's backbone, weights, image size and preprocessing."""
    if not config.pretrained:
        raise ConfigError(
            "strategy 'frozen' needs pretrained weights (a frozen random backbone learns nothing); "
            "use 'finetune' to train from scratch"
        )
    key = {
        "model": config.model,
        "weights": weights_identity(config),
        "image_size": config.image_size,
        "intensity": config.intensity,
        "timm": timm.__version__,
        "pneumolab": pneumolab.__version__,
    }
    return FeatureCache(Path(config.feature_cache or default_cache_dir()), key)


def extract_features(
    model: XrayClassifier, pixels: torch.Tensor, intensity: str, bf16: bool, batch_size: int = 64
) -> torch.Tensor:
    """Backbone features of uint8 ``(N, 1, S, S)`` pixels (eval mode, optional bf16 autocast);
    the model's training mode is restored afterwards."""
    was_training = model.training
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    )
    with autocast:
        features = score_batches(
            lambda x: model.features(x).float(), model, pixels, intensity, batch_size
        )
    model.train(was_training)
    return torch.from_numpy(features)


def frozen_datasets(
    model: XrayClassifier,
    cache: FeatureCache,
    intensity: str,
    train_images: DecodedImages,
    val_images: DecodedImages,
    targets: tuple[torch.Tensor, torch.Tensor],
    bf16: bool,
) -> tuple[FeatureHead, TensorDataset, TensorDataset, CacheStats]:
    """The head to train and its (features, target) datasets, features from ``cache``;
    ``targets`` holds the train and the val targets."""
    samples = train_images.samples + val_images.samples
    pixels = torch.cat([train_images.pixels, val_images.pixels])
    features, stats = cache.features(
        samples, pixels, lambda p: extract_features(model, p, intensity, bf16)
    )
    log.info("feature cache %s: %d reused, %d computed", cache.folder, stats.reused, stats.computed)
    n_train = len(train_images.samples)
    return (
        FeatureHead(model.backbone.get_classifier()),
        TensorDataset(features[:n_train], targets[0]),
        TensorDataset(features[n_train:], targets[1]),
        stats,
    )
