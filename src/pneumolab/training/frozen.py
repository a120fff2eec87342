"""The ``frozen`` strategy: backbone features computed once (cached on disk), head trained on them."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
import timm
import torch
from torch import nn

import pneumolab
from pneumolab.config import TrainConfig
from pneumolab.data.layout import Sample
from pneumolab.files import sha256_of
from pneumolab.inference.torch_scoring import score_batches
from pneumolab.models.classifier import XrayClassifier, pneumonia_logit
from pneumolab.models.registry import find_local_weights, published_source
from pneumolab.training.distributed import gather_rows, shard
from pneumolab.training.feature_cache import (
    CacheStats,
    FeatureCache,
    default_cache_dir,
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
        """The classifier head's logits for cached backbone features."""
        return self.classifier(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return pneumonia_logit(self.class_logits(features))


def weights_identity(config: TrainConfig) -> str:
    """What the pretrained weights are: the local file's SHA-256, else the hub source."""
    local = find_local_weights(config.model, config.weights)
    if local is not None:
        return f"sha256:{sha256_of(local)}"
    return f"hub:{published_source(config.model) or config.model}"


def cache_for(config: TrainConfig) -> FeatureCache:
    """The feature cache of this config's backbone, weights, image size and preprocessing."""
    key = {
        "model": config.model,
        "weights": weights_identity(config),
        "image_size": config.image_size,
        "intensity": config.intensity,
        **({"border_fade": config.border_fade} if config.border_fade else {}),
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


@dataclass
class FrozenBackbone:
    """The frozen strategy's backbone and its feature cache. Rank 0 looks the images up in the
    cache; every rank computes its share of the missing features; rank 0 adds them to the cache
    (one writer) and sends every rank the features of all images."""

    model: XrayClassifier
    cache: FeatureCache
    intensity: str
    bf16: bool

    def head(self) -> FeatureHead:
        """The module that trains: the backbone's classifier, on features."""
        return FeatureHead(self.model.backbone.get_classifier())

    def features(
        self, trainer: L.Trainer, samples: list[Sample], pixels: torch.Tensor
    ) -> tuple[torch.Tensor, CacheStats]:
        """Features ``(N, D)`` of ``samples`` (decoded ``pixels``), the same on every rank."""
        strategy = trainer.strategy
        found = self.cache.lookup(samples) if trainer.is_global_zero else None
        missing = strategy.broadcast(found.missing if found else None)
        fresh, per_rank = None, [0] * trainer.world_size
        if missing:
            mine = [missing[i] for i in shard(len(missing), trainer)]
            device = strategy.root_device
            self.model.to(device)
            # a rank without a share computes one image it then drops: gathers need a shape
            part = self._extract(pixels[mine or missing[:1]])[: len(mine)]
            fresh = gather_rows(trainer, part.to(device)).cpu()
            self.model.cpu()
            per_rank = [len(shard(len(missing), trainer, rank)) for rank in range(len(per_rank))]
        result = None
        if found is not None:
            features, stats = self.cache.complete(found, fresh)
            result = features, replace(stats, computed_per_rank=per_rank)
        shared = strategy.broadcast(result)
        assert shared is not None  # rank 0's
        return shared

    def _extract(self, pixels: torch.Tensor) -> torch.Tensor:
        return extract_features(self.model, pixels, self.intensity, self.bf16)
