"""The network pneumolab trains and serves: grayscale X-ray in, one pneumonia logit out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class XrayClassifier(nn.Module):
    """Wrap an RGB backbone so it takes ``(B, 1, H, W)`` grayscale in [0, 1] and returns ``(B,)`` logits.

    Grayscale is replicated to three channels rather than folding the stem into one channel:
    it reproduces the ImageNet features exactly, costs nothing measurable, and keeps every
    timm model usable unchanged. Normalisation lives inside the module, so exported models
    (ONNX) carry it and callers only supply pixels scaled to [0, 1].
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.expand(-1, self.mean.shape[1], -1, -1) - self.mean) / self.std
        # channels-last runs oneDNN's fastest convolution kernels on CPU (~1.3x in training)
        return self.backbone(x.contiguous(memory_format=torch.channels_last)).squeeze(-1)
